"""The backend interface, target strings and the registry.

A backend turns a plan (+ config) into something callable on tensors:
``supports(target)``, ``prepare(plan, target, config, **options) -> artifact``
(render and build; options: ``interpret`` for GPU targets), ``launch(artifact, inputs, sizes, params) -> {output: tensor}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from einattn.ir import Op, UnsupportedError, settings

TARGET_KINDS = ("reference", "streaming", "cpu", "cuda", "rocm")


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    arch: str | None = None

    def __str__(self) -> str:
        return self.kind if self.arch is None else f"{self.kind}:{self.arch}"


def parse_target(text: str) -> Target:
    if not isinstance(text, str):
        raise UnsupportedError(f"target must be a string such as 'cpu' or 'cuda:sm_90', not {text!r}")
    kind, _, arch = text.strip().partition(":")
    if kind not in TARGET_KINDS:
        raise UnsupportedError(f"unknown target {text!r}; expected one of "
                               + ", ".join(TARGET_KINDS) + " (cuda:sm_XX, rocm:gfxXXX)")
    if arch and kind in ("reference", "streaming", "cpu"):
        raise UnsupportedError(f"target '{kind}' takes no architecture suffix (got {text!r})")
    return Target(kind, arch or None)


@dataclass(frozen=True, slots=True)
class Workload:
    """What one tuned kernel is for: the size of every index of the spec and the inputs' dtype.

    >>> Workload.of({"m": 1, "n": 8192, "d": 64}).size("n")
    8192
    """
    sizes: tuple[tuple[str, int], ...]
    dtype: str = "float32"

    @classmethod
    def of(cls, sizes: dict, dtype="float32") -> "Workload":
        return cls(tuple(sorted((str(k), int(v)) for k, v in sizes.items())), str(dtype).replace("torch.", ""))

    def size(self, index: str, default: int | None = None) -> int:
        for k, v in self.sizes:
            if k == index:
                return v
        if default is None:
            raise KeyError(index)
        return default

    def as_dict(self) -> dict[str, int]:
        return dict(self.sizes)


class Backend(Protocol):
    name: str
    config_keys: tuple[str, ...]

    def supports(self, target: Target) -> bool: ...
    def prepare(self, plan, target: Target, config: dict, **options): ...
    def launch(self, artifact, inputs: dict, sizes: dict, params: dict) -> dict: ...


def check_config(backend_name: str, config: dict, allowed: dict[str, type], auto: tuple[str, ...] = ()) -> dict:
    """Reject unknown or ill-typed config keys instead of ignoring them. Ints must be positive,
    except the keys in ``auto``, where 0 means "chosen per call"; a ``str`` key takes text."""
    out = {}
    for k, v in (config or {}).items():
        if k not in allowed:
            raise UnsupportedError(f"config key {k!r} is not understood by the {backend_name} backend; "
                                   f"it accepts: {', '.join(allowed) or 'no keys'}")
        if allowed[k] is str:
            if not isinstance(v, str):
                raise UnsupportedError(f"config {k}={v!r} for the {backend_name} backend must be text")
        elif not isinstance(v, allowed[k]) or isinstance(v, bool) or (isinstance(v, int) and v < (0 if k in auto else 1)):
            least = "an int >= 0 (0: chosen per call)" if k in auto else f"a positive {allowed[k].__name__}"
            raise UnsupportedError(f"config {k}={v!r} for the {backend_name} backend must be {least}")
        out[k] = v
    return out


INDEX_LIMIT = 2 ** 31       # kernels index with 32-bit offsets (the Triton kernels within one (batch, head) slice)


def span(shape, strides, skip=()) -> int:
    """The largest element offset of a tensor view: sum of (size - 1) * |stride| over its dims,
    leaving out the dims at the positions in ``skip`` (those indexed with 64-bit offsets)."""
    return sum((n - 1) * abs(st) for j, (n, st) in enumerate(zip(shape, strides)) if n > 0 and j not in skip)


def all_finite(t) -> bool:
    """No NaN or inf in ``t``. On CPU tensors one single-threaded numpy pass, so PyTorch's
    OpenMP pool is not woken to spin beside TVM's; on a GPU one reduction and a sync. A sum
    that overflows reads as not finite: the caller then takes the exact path that visits
    every key tile, never a wrong one."""
    if t.numel() == 0:
        return True
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        import numpy as np
        with np.errstate(all="ignore"):      # inf - inf in the sum is the answer, not a warning
            return bool(np.isfinite(np.add.reduce(t.detach().numpy(), axis=None)))
    if t.device.type == "cpu" and t.dtype in _EXPONENT:
        # 16-bit floats: the largest magnitude's bits below the all-ones exponent (exact, no sum)
        import numpy as np
        bits = t.detach().view(torch.uint16).numpy()
        return int(np.bitwise_and(bits, 0x7FFF).max()) < _EXPONENT[t.dtype]
    return bool(torch.isfinite(t.detach().sum(dtype=torch.float32)))


_EXPONENT = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}     # the bits of +inf


def _all_finite_many(ts: list) -> bool:
    """``all_finite`` of several tensors; on a GPU with one synchronisation."""
    gpu = [t for t in ts if t.device.type != "cpu" and t.numel()]
    if gpu:
        # sums, not isfinite().all(): half the time on an H200 (0.13 vs 0.25 ms for 2 x 16M fp16)
        if not bool(torch.stack([t.detach().sum(dtype=torch.float32) for t in gpu]).isfinite().all()):
            return False
    return all(all_finite(t) for t in ts if t.device.type == "cpu")


def hidden_nonfinite(kp, inputs: dict, sizes: dict | None = None, params: dict | None = None,
                     blocks: tuple[int, int] | None = None) -> bool:
    """Whether an input read at key tiles that the plan skips holds a NaN or an inf.

    Skipping a key tile hidden by the mask is exact only for finite inputs: in the
    reference a NaN or inf at a hidden key still reaches the row through ``0 * NaN``
    (the weight is 0, the product is not). Kernels then visit every tile
    (``KernelPlan.visiting_all``), so every target gives the reference's NaN.
    With the call's ``sizes`` and ``params``: False without reading the inputs when no tile
    is skipped: every skipping pass's mask is true on the whole call (a decoding step under a
    bottom-right causal mask sees every key), or, given the kernel's ``blocks`` (query rows,
    keys), the kernel's own corner test finds no key tile empty for any query block."""
    if sizes is not None and not _may_skip(kp, sizes, params or {}, blocks):
        return False
    return not _all_finite_many([inputs[n] for n in kp.skipped_inputs()])


def _may_skip(kp, sizes: dict, params: dict, blocks: tuple[int, int] | None) -> bool:
    from einattn.compiler.masks import domain_decision, tiles_hidden
    m, n = int(sizes[kp.query]), int(sizes[kp.key])
    masks = [p.mask for p in kp.passes if p.skip_empty and p.mask is not None]
    used = {e.arg for x in masks for e in x.walk() if e.op is Op.PARAM}
    if any(float(params.get(u, 0.5)) % 1 or abs(float(params[u])) >= 2 ** 24 for u in used):
        return True                 # kernels compare in float32: decide exactly only on integers
    try:
        # true on the whole call: nothing is hidden (one corner test, before the tile-by-tile one)
        masks = [x for x in masks if not domain_decision(x, kp.query, kp.key, m, n, params)[0]]
        return any(blocks is None or tiles_hidden(x, kp.query, kp.key, m, n, *blocks, params) for x in masks)
    except (KeyError, TypeError):          # a param the call does not give: check the inputs
        return True


def complete_params(c, sizes: dict, params: dict) -> dict:
    """``params`` plus the params a rewrite added to the planned cascade ``c`` (the sizes a
    split sum multiplies a term by: docs/passes.md, ``split_score_sum``), from their expressions."""
    if all(p.name in params for p in c.params):
        return params
    from einattn.ir import eval_params
    known = {p.name for p in c.params}
    return eval_params(c, sizes, {k: v for k, v in params.items() if k in known})


def with_statistics(kp, inputs: dict, sizes: dict, params: dict) -> dict:
    """The inputs plus the statistics the plan computes before the kernel (``KernelPlan.pre``,
    ``compiler/statistics.py``): evaluated in float32 on the inputs' device by the torch
    evaluator, in order, each over its full ranges."""
    pre = getattr(kp, "pre", ())
    if not pre:
        return inputs
    from einattn.compiler.statistics import keeps_input_dtype

    from .torch.evaluator import Frame, eval_stmt
    decl = {t.name: t.indices for t in kp.cascade.inputs}
    device = next(iter(inputs.values())).device if inputs else "cpu"
    ranges = {i: (0, int(n)) for i, n in sizes.items()}
    frame = Frame(ranges, {k: (v, decl[k]) for k, v in inputs.items() if k in decl}, {}, dict(params),
                  torch.float32, device=device)
    out = dict(inputs)
    for s in pre:
        t = eval_stmt(s, frame)
        frame.values[s.name] = (t, s.indices)
        dts = {out[r].dtype for r in s.expr.reads()}
        # a value operand is a dot operand: the dtype of its inputs; a statistic stays float32
        out[s.name] = t.to(dts.pop()) if keeps_input_dtype(s) and len(dts) == 1 else t
    return out


def dot_dtype(kp, x: dict) -> torch.dtype:
    """The one dtype of the dot products' operands (Q, K, V...); other inputs may differ (they
    are read in fp32). Outputs with the value index take this dtype."""
    from einattn.compiler.kernel_plan import Kind
    reads = [e for p in kp.passes for op in p.loop
             for e in ((op.query_read, op.key_read) if op.kind is Kind.SCORE else
                       (op.value_read,) if op.kind is Kind.VALUE else ())]
    names = list(dict.fromkeys(e.arg[0] for e in reads if e.arg[0] in x))
    dts = {n: x[n].dtype for n in names}
    if len(set(dts.values())) > 1:
        found = ", ".join(f"{n}: {str(d).replace('torch.', '')}" for n, d in dts.items())
        raise UnsupportedError(f"'{kp.cascade.name}': the inputs of the dot products must share one dtype, "
                               f"found {found}; convert them to one (e.g. .half() or .float())")
    return next(iter(dts.values()), torch.float32)


def io_dtypes(kp, x: dict) -> dict[str, torch.dtype]:
    """The dtype of each input (as given) and output of a call on the inputs ``x``: outputs with a
    value index (O) take the dot products' dtype (``dot_dtype``), per-row outputs (lse) float32,
    as SDPA does."""
    compute = dot_dtype(kp, x)
    c = kp.cascade
    out = {t.name: x[t.name].dtype for t in c.inputs if t.name in x}
    for o in c.outputs:
        out[o] = compute if any(i in kp.value for i in c.stmt(o).indices) else torch.float32
    return out


def threads() -> int:
    """Threads a kernel call runs on (EINATTN_NUM_THREADS, else torch's): what a split key loop,
    the row blocks and a linear scan's tasks are spread over. Cheap: asked on every call."""
    return settings.num_threads() or torch.get_num_threads()
