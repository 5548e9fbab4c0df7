"""Useful FLOPs of one call, read from the kernel plan: what GFLOP/s figures in tuning
records and benchmarks divide by.

The count is 2 per multiply-add of every score and value contraction, times the
share of (query, key) pairs a pass visits when it skips masked tiles; that share
is counted exactly by evaluating the mask, ``rows`` query rows at a time, so it
costs O(M * N) but never holds more than ``rows * N`` booleans.
"""
from __future__ import annotations

import math


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
