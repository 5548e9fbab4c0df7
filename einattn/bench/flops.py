"""Useful FLOPs of one call, read from the kernel plan, and the peak that %peak refers to.

The count is 2 per multiply-add of every score and value contraction, times the
share of (query, key) pairs a pass visits when it skips masked tiles; that share
is counted exactly by evaluating the mask, ``rows`` query rows at a time, so it
costs O(M * N) but never holds more than ``rows * N`` booleans.

Example:
    >>> import einattn
    >>> spec = einattn.load_spec("causal")
    >>> count_flops(spec, dict(b=1, h=1, m=4, n=4, d=2, e=2), {"scale": 0.7})["flops"]
    80
"""
from __future__ import annotations

import math
import time

# fp32 FMA peak of the machines this project benchmarks on (2 Zen 5 cores, AVX-512; the machines
# of benchmarks/RESULTS.md), measured with a TVM kernel that keeps 24 independent zmm accumulators
# busy with FMAs: what the cores can do, not what torch.matmul reaches. Other machines: pass
# --peak GFLOPS, or --peak matmul to measure torch.matmul 2048^3 instead.
PEAK_FP32_GFLOPS = 474.0
PEAK_SOURCE = ("fp32 FMA peak of the 2 Zen 5 cores (AVX-512) of benchmarks/RESULTS.md, measured with a TVM "
               "kernel of 24 independent zmm FMA accumulators; on another machine pass --peak GFLOPS or "
               "--peak matmul")


def visible_pairs(mask, query: str, key: str, sizes: dict, params: dict, rows: int = 1024) -> int:
    """Number of (query, key) pairs where the affine predicate ``mask`` holds, counted exactly
    (evaluated by the reference evaluator, ``rows`` query rows at a time)."""
    import torch

    from einattn.backends.torch.evaluator import Evaluator, Frame
    m, n = sizes[query], sizes[key]
    seen = 0
    for r0 in range(0, m, rows):
        f = Frame({query: (r0, min(r0 + rows, m)), key: (0, n)}, {}, {}, params, torch.float64)
        v = Evaluator(f, (query, key))(mask)
        seen += int(v.expand(min(rows, m - r0), n).sum())
    return seen


def count_flops(spec, sizes: dict, params: dict) -> dict:
    """Useful FLOPs of one call: 2 per multiply-add of every score and value contraction,
    times the share of visible (query, key) pairs where the pass skips masked tiles.

    Scores recomputed by a later pass (multi-pass plans) are not counted: the figure
    is the work a one-pass algorithm would need, so GFLOP/s compare across plans.
    """
    from einattn.compiler import Kind, make_kernel_plan, make_plan
    kp = make_kernel_plan(make_plan(spec))
    total, terms, fractions = 0, [], {}
    pairs = sizes[kp.query] * sizes[kp.key]
    for p in kp.passes:
        seen = pairs
        if p.mask is not None and p.skip_empty:
            seen = visible_pairs(p.mask, kp.query, kp.key, sizes, params)
            fractions[str(p.mask)] = seen / pairs if pairs else 0.0
        here = []
        for op in p.loop:
            if op.kind not in (Kind.SCORE, Kind.VALUE) or (op.kind is Kind.SCORE and op.recomputed):
                continue
            inner = op.contract if op.kind is Kind.SCORE else kp.key
            f = 2 * math.prod(sizes[i] for i in op.dims) * sizes[inner] // pairs * seen if pairs else 0
            total += f
            here.append(f"{op.name}: 2*{'*'.join(i.upper() for i in op.dims + (inner,))}")
        if here and seen != pairs:
            here[-1] += f", times {seen / pairs:.4f} = the share of (query, key) pairs where {p.mask}"
        terms += here
    note = "; ".join(terms)
    if kp.plan.passes > 1:
        note += f" ({kp.plan.passes} passes: scores recomputed by later passes not counted)"
    return {"flops": total, "terms": note, "visible_fraction": fractions, "passes": kp.plan.passes}


def measure_matmul_peak(reps: int = 5) -> float:
    """GFLOP/s of torch.matmul on 2048^3 fp32, best of ``reps`` after one warm call."""
    import torch
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.matmul(a, b)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        ts.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / min(ts) / 1e9


def resolve_peak(text: str | None) -> tuple[float, str]:
    """``--peak`` text -> (GFLOP/s, where it came from): None or "" for PEAK_FP32_GFLOPS (the
    benchmark machines' fp32 FMA peak, cited by PEAK_SOURCE), "matmul" to measure torch.matmul,
    else a number."""
    if text in (None, ""):
        return PEAK_FP32_GFLOPS, PEAK_SOURCE
    if str(text).lower() == "matmul":
        return measure_matmul_peak(), "measured: torch.matmul 2048^3, best of 5"
    return float(text), "given with --peak"
