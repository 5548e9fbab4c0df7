"""The CPU backend: fused attention kernels generated with TVM for the host CPU.

``prepare`` classifies the plan (``make_kernel_plan``) and checks the config;
the kernel is rendered and built on the first call with a given *shape bucket*
(the sizes compiled in: contraction and value dims such as d and e; batch, heads
and sequence lengths stay runtime values, so one build serves every length).
Builds and their disk cache: ``build.py``; TVM's runtime, threads and fork:
``runtime.py``.

Inputs: float32, bfloat16 or float16 CPU tensors, passed to the kernel without
copies (DLPack; bf16 as its uint16 bit patterns). The kernel computes in float32:
it widens each element it reads and rounds the outputs with the value index to the
dot products' dtype (per-row outputs such as lse stay float32, as SDPA does);
docs/dtypes.md gives the accuracy of each dtype. float64 is rejected with the
conversion to use.
Any strides are accepted (views such as ``q.transpose(1, 2)`` of a [b, m, h, d]
projection, ``expand``ed per-head tensors) except in the last dimension of a
tensor whose rows are read as vectors (Q, K, V, G: their last index is a
compiled-in size such as d or e): such a tensor with a strided last dimension is
rejected with the fix (``.contiguous()``) rather than copied behind the caller's
back. Offsets are 32-bit: a tensor spanning 2**31 elements or more is rejected.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from einattn.compiler import Capabilities, KernelPlan, check_capabilities, make_kernel_plan
from einattn.ir import UnsupportedError

from ..base import (INDEX_LIMIT, Target, check_config, complete_params, hidden_nonfinite, io_dtypes, span,
                    threads, with_statistics)
from .build import get_kernel
from .config import CpuConfig, resolve
from .host import read_cache_sizes
from .view import workspace_numel

MAX_VALUE_WIDTHS = 4      # value tensors of different widths (O1 from V[.., e], O2 from W[.., f]); tested with 2
from .runtime import _check_tvm_installed, host, run_kernel


@dataclass
class CpuArtifact:
    """What ``prepare`` returns: the kernel plan and config; builds happen per shape bucket.

    ``config`` may leave choices to each call (``PROGRAM="auto"``, ``PACK=0``: ``config.resolve``);
    ``given`` names the keys the caller set; :meth:`concrete` is the artifact of one resolved config."""
    kp: KernelPlan
    config: CpuConfig
    static: tuple[str, ...]
    spec_hash: str
    builds: dict = field(default_factory=dict)      # shape bucket -> kernel
    skip: bool = True                               # hidden key tiles are skipped
    visit_all: "CpuArtifact | None" = None          # the variant that visits them, made on demand
    given: frozenset = frozenset()
    resolved: dict = field(default_factory=dict)    # resolved config -> its artifact

    def concrete(self, sizes: dict, params: dict) -> "CpuArtifact":
        """The artifact of the config this call runs (``config.resolve``), made once per config."""
        cfg = resolve(self.config, self.given, self.kp, sizes, params, threads())
        if cfg == self.config:
            return self
        art = self.resolved.get(cfg)
        if art is None:
            cfg.check(host().fp32_lanes)
            art = self.resolved[cfg] = dataclasses.replace(self, config=cfg, builds={}, visit_all=None, resolved={})
        return art

    def for_inputs(self, inputs: dict, sizes: dict | None = None, params: dict | None = None) -> "CpuArtifact":
        """This artifact, or its variant that visits every key tile (see ``hidden_nonfinite``)."""
        # the kernel's query blocks (BLOCK_M query rows in both programs) and key tiles
        blocks = (self.config.BLOCK_M, self.config.BLOCK_N)
        if not hidden_nonfinite(self.kp, inputs, sizes, params, blocks if sizes is not None else None):
            return self
        if self.visit_all is None:
            self.visit_all = dataclasses.replace(self, kp=self.kp.visiting_all(), builds={}, skip=False)
        return self.visit_all


class CpuBackend:
    name = "cpu"
    config_keys = tuple(CpuConfig.keys())
    # per-row values may carry one compiled-in feature index (a value or a contraction index),
    # and so may outputs; each value width has its own accumulator and P.V register tiles
    capabilities = Capabilities(max_value_indices=MAX_VALUE_WIDTHS, row_reductions=True, outputs_need_query=True,
                                output_roles=frozenset({"grid", "query", "value", "contract"}),
                                row_feature_roles=frozenset({"value", "contract"}), max_row_features=1)

    # the chunked scan of linear cascades (backends/linear.py): its FLOP rate relative to the
    # quadratic kernel's and its best chunk, measured (benchmarks/RESULTS.md, "Linear attention")
    scan_efficiency = 0.85
    scan_chunk = 32

    @staticmethod
    def scan(x, mask: str, chunk: int, schedule: str, state=None):
        from .linear import scan_cpu
        return scan_cpu(x, mask, chunk, schedule, state)

    def supports(self, target: Target) -> bool:
        return target.kind == "cpu"

    def prepare(self, plan, target: Target, config: dict, **options) -> CpuArtifact:
        if options:
            raise UnsupportedError(f"the cpu backend takes no options, got {sorted(options)}")
        cfg = CpuConfig(**check_config(self.name, config, CpuConfig.keys(), CpuConfig.AUTO_KEYS))
        _check_tvm_installed()                    # fail early and clearly; importing TVM waits for a build
        given = frozenset(config or {})
        # a decode config's open keys are chosen per call (and checked then): check what was given
        open_ = {k: 1 for k in ("BLOCK_M", "PV_RM") if cfg.decode and k not in given}
        dataclasses.replace(cfg, **open_).check(host().fp32_lanes)
        kp = make_kernel_plan(plan)
        check_capabilities(kp, self.capabilities, self.name)
        cfg.check_plan(kp)
        return CpuArtifact(kp, cfg, kp.static, plan.cascade.structural_hash(), given=given)

    def describe(self, artifact: CpuArtifact, sizes: dict, params: dict | None = None) -> str:
        """Which program a call at ``sizes`` gets, why, and the config it runs (``einattn explain``)."""
        from einattn.compiler.decode import describe
        from .config import DECODE_MAX_ROWS
        params = complete_params(artifact.kp.cascade, sizes, dict(params or {}))
        text = describe(artifact.kp, sizes, params, artifact.config.PROGRAM, DECODE_MAX_ROWS)
        cfg = resolve(artifact.config, artifact.given, artifact.kp, sizes, params, threads())
        return f"{text}\n  config {cfg.as_dict()}"

    # -- the search space, for the autotuner ---------------------------------------------
    def space(self, plan, target: Target, workload) -> list[dict]:
        """Config dicts worth timing for ``plan`` at ``workload`` on this host, the default
        first where it fits the workload (``CpuConfig.space``: nothing is compiled; the first
        call in a process without a cached host description asks LLVM, importing TVM)."""
        kp = make_kernel_plan(plan)
        return [c.as_dict() for c in CpuConfig.space(kp, workload, host(), read_cache_sizes())]

    def default_config(self, plan, target: Target, workload) -> dict:
        """What a call at ``workload`` runs when given no config: the host's defaults
        (``CpuConfig.default``) resolved for the workload (``config.resolve``: the program and
        the keys it chooses per call)."""
        from .config import workload_params
        kp = make_kernel_plan(plan)
        sizes = workload.as_dict()
        return resolve(CpuConfig.default(host()), frozenset(), kp, sizes, workload_params(kp, sizes),
                       threads()).as_dict()

    def kernel_source(self, plan, target: Target, config: dict, workload) -> str:
        """The TVMScript source of ``config`` at the workload's compiled-in sizes (what a tuning
        record's ``source_sha`` hashes); nothing is built."""
        from .build import build_source
        art = self.prepare(plan, target, config)
        sizes = workload.as_dict()
        from .config import workload_params
        art = art.concrete(sizes, workload_params(art.kp, sizes))
        return build_source(art, {i: int(sizes[i]) for i in art.static})

    def fingerprint(self, target: Target) -> dict:
        """The named facts that change the generated code or its speed (keys tuning records)."""
        from .build import _tvm_version
        from .render import template_hash
        cpu, caches = host(), read_cache_sizes()
        return {"backend": self.name, "host": cpu.fingerprint(), "triple": cpu.triple, "mcpu": cpu.mcpu,
                "vector_bits": cpu.vector_bits, "cores": caches.cores, "l1d": caches.l1d, "l2": caches.l2,
                "l3": caches.l3, "tvm": _tvm_version(), "template": template_hash()}

    def launch(self, artifact: CpuArtifact, inputs: dict, sizes: dict, params: dict) -> dict:
        c = artifact.kp.cascade
        params = complete_params(c, sizes, params)
        inputs = with_statistics(artifact.kp, inputs, sizes, params)
        args = [_check_input(t.name, inputs[t.name], bool(t.indices) and t.indices[-1] in artifact.static)
                for t in c.inputs]
        x = dict(zip([t.name for t in c.inputs], args))
        dtypes = io_dtypes(artifact.kp, x)
        outs = {}
        for o in c.outputs:
            shape = [int(sizes[i]) for i in c.stmt(o).indices]
            outs[o] = torch.empty(shape, dtype=dtypes[o])
        if all(t.numel() == 0 for t in outs.values()):
            return outs                    # no query rows (or an empty batch): nothing to compute
        bucket = tuple((i, int(sizes[i])) for i in artifact.static)
        zero = [f"{i}=0" for i, v in bucket if v == 0]
        if zero or any(t.numel() == 0 for t in outs.values()):
            raise UnsupportedError(f"{c.name}: sizes {', '.join(zero) or 'that empty an output but not all'} "
                                   f"on the cpu target: the kernel compiles these sizes in and needs them >= 1; "
                                   f"target='reference' gives the empty/zero result")
        artifact = artifact.concrete(sizes, params).for_inputs(x, sizes, params)
        names = {k: str(v).removeprefix("torch.") for k, v in dtypes.items() if v != torch.float32}
        key = (bucket, tuple(sorted(names.items())))
        fn = artifact.builds.get(key)
        if fn is None:
            fn = artifact.builds[key] = get_kernel(artifact, dict(bucket), names)
        ws = []
        if artifact.config.KV_SPLITS > 1:       # a slot per (task, part) for the parts' states
            ws = [torch.empty(workspace_numel(artifact.kp, artifact.config, dict(bucket), sizes),
                              dtype=torch.float32)]
        if artifact.kp.tile_lists:            # block-sparse: the key tiles each task visits
            from ..tiles import visit_lists        # (KV_SPLITS > 1 is refused: compiler.splits)
            cfg = artifact.config
            pack = None
            if cfg.decode and cfg.PACK > 1:     # a task: PACK heads (one GQA group) x BLOCK_M tokens
                from einattn.compiler.decode import packing
                pack = (packing(artifact.kp).index, cfg.PACK)
            ws += list(visit_lists(artifact.kp, x, sizes, params, cfg.BLOCK_M, cfg.BLOCK_N, pack)[:2])
        _check_offsets(list(x.items()) + list(outs.items()) + [("the KV_SPLITS workspace", w) for w in ws])
        run_kernel(fn, (*map(_bits, args), *map(_bits, outs.values()), *ws,
                        *[float(params[p.name]) for p in c.params]), threads())
        return outs


def _bits(t: torch.Tensor) -> torch.Tensor:
    """What the kernel is passed for ``t``: bf16 as its uint16 bit patterns (``expr.STORAGE``)."""
    return t.view(torch.uint16) if t.dtype == torch.bfloat16 else t


# -- inputs --------------------------------------------------------------------------

def _check_input(name: str, t: torch.Tensor, unit_last: bool) -> torch.Tensor:
    if t.device.type != "cpu":
        raise UnsupportedError(f"input '{name}' is on {t.device}; the cpu target runs on CPU tensors "
                               f"(move it with .cpu() or compile for a GPU target)")
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        fix = {torch.float64: "the kernel computes in float32; convert with .float() "
                              "(or use target='reference' for float64)"}.get(t.dtype, "convert with .float()")
        raise UnsupportedError(f"input '{name}' is {t.dtype}; the cpu target takes float32, bfloat16 and "
                               f"float16 tensors: {fix}")
    if unit_last and t.stride(-1) != 1:
        if t.size(-1) == 1:               # the stride of a size-1 dim is irrelevant: a zero-copy view
            return t.as_strided(t.shape, t.stride()[:-1] + (1,))
        raise UnsupportedError(f"input '{name}' has stride {t.stride(-1)} in its last dimension (shape "
                               f"{tuple(t.shape)}, strides {t.stride()}); the cpu kernel reads rows as vectors "
                               f"and needs it contiguous: pass {name}.contiguous() (other dims may have any stride)")
    return t


def _check_offsets(tensors) -> None:
    for name, t in tensors:
        reach = span(t.shape, t.stride())
        if reach >= INDEX_LIMIT:
            raise UnsupportedError(f"tensor '{name}' (shape {tuple(t.shape)}) spans {reach} elements; the cpu "
                                   f"kernel indexes with 32-bit integers (< 2**31): call it on slices of the "
                                   f"batch or heads, or, when one (batch, head) slice is that large, on chunks "
                                   f"of the query rows (they are independent)")
