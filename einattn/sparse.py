"""Block-sparse variants (spec v1.1): the kernel ``einattn.compile`` returns for a cascade that
selects key blocks. Stage A (``compiler/selection.py``) runs on the host with the torch
evaluator, a slice of query rows at a time (``backends/torch/rows.py``); stage B, a plain v1
cascade, is compiled for the target like any other spec."""
from __future__ import annotations

import torch

from einattn.compiler.selection import Stages, split
from einattn.ir import Loc, SpecError, UnsupportedError, bind_blocks, bind_sizes, eval_params

KERNEL_TARGETS = ("cpu", "cuda", "rocm")        # their key loops visit host-made tile lists (backends/tiles.py)
# the cpu decode program's time per visited (row, key tile) pair over the tile program's, measured on
# NSA's attention stage (benchmarks/RESULTS.md, "Block-sparse attention": 2.3x at 8K, 3.1x at 16K)
GROUP_TASK_COST = 3.0


class SparseKernel:
    """A compiled block-sparse variant. Called like a :class:`~einattn.kernel.Kernel`;
    ``select(...)`` returns stage A's tensors and ``block_mask(..., tile)`` their block lists."""

    def __init__(self, spec, stages: Stages, target, attend, params: dict, config: dict, interpret: bool = False,
                 group=None):
        self.spec, self.stages, self.target, self.config = spec, stages, target, dict(config)
        self.interpret = interpret
        # a selection shared by a GQA group, on the cpu with no config given: the decode program with a
        # task of one token x its group, picked per call against the tile program by cost (``choose``)
        self.group = group
        self.last_choice = None
        self.params = dict(params)
        self.attend = attend            # the stage-B Kernel (None on the reference target)

    def __repr__(self) -> str:
        return f"SparseKernel({self.spec.name!r}, target='{self.target}')"

    @property
    def plan(self):
        """The pass plan of the attention stage (what a kernel target runs)."""
        return self.attend.plan if self.attend is not None else self.stages.plan

    def __reduce__(self):
        from einattn.kernel import compile
        return _recompile, (compile, self.spec, str(self.target), self.params, self.config, self.interpret)

    def _bind(self, args, kwargs):
        from einattn.kernel import Kernel, _check_grouped_reads, _grouped_reads
        inputs = Kernel.bind(self, args, kwargs)
        c = self.spec
        sizes = bind_sizes(c, {n: tuple(t.shape) for n, t in inputs.items()})
        params = eval_params(c, sizes, self.params)
        sizes = bind_blocks(c, sizes, params)
        _check_grouped_reads(_grouped_reads(c), sizes, params)
        return inputs, sizes, params

    def select(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Stage A's outputs (selections 0.0 / 1.0), in the dtype stage B computes in."""
        inputs, sizes, params = self._bind(args, kwargs)
        return self._select(inputs, sizes, params)

    def _select(self, inputs, sizes, params):
        from einattn.backends.torch.rows import run_rows
        a = self.stages.select
        dtype = torch.float64 if self.target.kind == "reference" or all(
            t.dtype == torch.float64 for t in inputs.values()) else torch.float32
        x = {t.name: inputs[t.name].to(dtype) for t in a.inputs}
        return run_rows(a, x, sizes, params, dtype)

    def block_mask(self, *args, tile: int = 64, **kwargs) -> dict[str, dict[str, torch.Tensor]]:
        """Per key-block tensor of stage B (``Sel``): its block lists for query tiles of ``tile``
        tokens (``backends/torch/selection.block_lists``: FlexAttention's BlockMask layout)."""
        from einattn.backends.torch.selection import block_lists
        inputs, sizes, params = self._bind(args, kwargs)
        sel = self._select(inputs, sizes, params)
        return {kb.tensor: block_lists(_blocks_last(kb, sel[kb.tensor]), tile) for kb in self.stages.key_blocks}

    def __call__(self, *args, **kwargs):
        from einattn.backends.torch.rows import run_rows
        inputs, sizes, params = self._bind(args, kwargs)
        c = self.spec
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs.values()):
            raise UnsupportedError(f"{c.name}: the backward of a block-sparse cascade is not built yet (its dq and "
                                   f"dkv kernels would visit every key tile); call it under torch.no_grad() or "
                                   f"on tensors that do not require grad")
        if self.attend is None:
            outs = run_rows(c, {k: v.to(torch.float64) for k, v in inputs.items()}, sizes, params)
        else:
            sel = self._select(inputs, sizes, params)
            x = {t.name: inputs[t.name] for t in self.stages.attend.inputs if t.name in inputs}
            dtype = next(iter(inputs.values())).dtype
            x.update({k: v.to(dtype) for k, v in sel.items()})
            kernel = self.attend if self.group is None else self.choose(x)[0]
            res = kernel(**x)
            outs = dict(zip(self.stages.attend.outputs, res if isinstance(res, tuple) else (res,)))
        res = tuple(outs[o] for o in c.outputs)
        return res[0] if len(res) == 1 else res


    def choose(self, x: dict):
        """(kernel, why) for stage B's inputs ``x``: the tile program, or where a selection is shared
        by a GQA group the decode program (one token x the group per task) when its share of visited
        key blocks times ``GROUP_TASK_COST`` is below the tile program's. The shares are those of the
        selections alone (``block_lists`` at the tile program's BLOCK_M tokens and at one token), a
        cheap stand-in for the kernels' own lists, which also hold the other branches' tiles."""
        from einattn.backends.torch.selection import block_lists
        art, c = self.attend._artifact, self.attend.spec
        sz = bind_sizes(c, {n: tuple(t.shape) for n, t in x.items()})
        bm = art.concrete(sz, eval_params(c, sz, self.attend.params)).config.BLOCK_M
        fracs = [0.0, 0.0]
        for kb in self.stages.key_blocks:
            t = _blocks_last(kb, x[kb.tensor])
            nb = t.shape[-1]
            for j, tile in enumerate((bm, 1)):
                fracs[j] = max(fracs[j], float(block_lists(t, tile)["kv_num_blocks"].double().mean()) / max(nb, 1))
        tile, group = fracs[0], fracs[1] * GROUP_TASK_COST
        pick = self.group if group < tile else self.attend
        why = (f"{'token x group' if pick is self.group else 'tile'}: a tile of {bm} tokens selects {fracs[0]:.1%} "
               f"of the key blocks, one token x its group {fracs[1]:.1%} (x {GROUP_TASK_COST} per pair)")
        self.last_choice = why
        return pick, why


def compile_sparse(c, target, tune: str, config: dict, params: dict, interpret: bool | None = None) -> SparseKernel:
    stages = split(c)
    if tune != "none":
        raise UnsupportedError(f"tune={tune!r}: the autotuner does not search block-sparse kernels yet; use "
                               f"tune='none' (the default config) or pin config={{...}}")
    known = {p.name for p in stages.attend.params}
    attend = None
    if target.kind != "reference":
        from einattn.kernel import compile
        attend = compile(stages.attend, target=str(target), config=config, interpret=interpret,
                         **{k: v for k, v in params.items() if k in known})
        art = attend._artifact
        kp = getattr(art, "kp", None) or getattr(art, "plan", None)
        if target.kind in KERNEL_TARGETS and not (kp is not None and kp.tile_lists):
            raise UnsupportedError(f"{c.name}: no pass of its attention stage can skip key tiles: none reads a "
                                   f"selection as T[.., {c.key} // BS] in a where() condition, or a key tile where "
                                   f"every condition is false still contributes to a reduction, so a {target} "
                                   f"kernel would visit every key tile; mask the scores to -inf (or the values "
                                   f"to 0) with the selection")
    elif config:
        raise SpecError("the reference target takes no config", loc=Loc(c.file), found=str(config))
    group = None
    if target.kind == "cpu" and not config and any(
            s.div is not None and s.index != c.key for kb in stages.key_blocks for s in kb.subs):
        group = compile(stages.attend, target=str(target), config={"PROGRAM": "decode", "BLOCK_M": 1},
                        **{k: v for k, v in params.items() if k in known})
    return SparseKernel(c, stages, target, attend, params, config, bool(attend is not None and attend.interpret),
                        group)


def _blocks_last(kb, t: torch.Tensor) -> torch.Tensor:
    """A key-block tensor as ``[.., query, blocks]`` (at least 2-D), as ``block_lists`` takes it."""
    t = t.movedim(kb.dims.index(kb.block), -1)
    return t if t.dim() >= 2 else t.unsqueeze(0)


def _recompile(compile, spec, target, params, config, interpret=False):
    return compile(spec, target=target, config=config, interpret=interpret or None, **params)
