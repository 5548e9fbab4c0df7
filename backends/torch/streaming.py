"""The streaming executor: runs a pass plan in torch, key tile by key tile.

It carries only the per-row state the plan names (running max, sums,
accumulators) between key tiles and recomputes score tiles in every pass, so it
never holds an [M, N] matrix larger than [M, BLOCK_N]. It is the executable
proof of the rewrites and the model the compiled backends render.
"""
from __future__ import annotations

import torch

from einattn.compiler import Plan, Role
from einattn.ir import Reduce

from .evaluator import Frame, align, eval_stmt, sub_rule


def run_streaming(plan: Plan, inputs: dict, sizes: dict, params: dict, block_n: int,
                  dtype=torch.float64) -> dict[str, torch.Tensor]:
    c = plan.cascade
    key = c.key
    full = {i: (0, n) for i, n in sizes.items()}
    ins = {t.name: (inputs[t.name], t.indices) for t in c.inputs}
    rows: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}

    def frame(ranges, values, running=None):
        return Frame(ranges, ins, values, params, dtype, running or {})

    for st in plan.prologue:
        s = c.stmt(st.name)
        rows[s.name] = (eval_stmt(s, frame(full, rows)), s.indices)
    n_keys = sizes[key]
    for p in plan.schedule:
        acc: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}
        for st in p.loop:
            s = c.stmt(st.name)
            if st.role is Role.REDUCE:
                shape = [sizes[i] for i in s.indices]
                acc[s.name] = (torch.full(shape, s.reduce.identity, dtype=dtype), s.indices)
        for n0 in range(0, max(n_keys, 1), block_n):
            ranges = dict(full)
            ranges[key] = (n0, min(n0 + block_n, n_keys))
            prev = dict(acc)                    # running values at the end of the previous tile
            tiles = dict(rows)
            for st in p.loop:
                s = c.stmt(st.name)
                f = frame(ranges, tiles, acc)
                if st.role is Role.TILE:
                    tiles[s.name] = (eval_stmt(s, f), s.indices)
                elif st.role is Role.RUNNING_ROW:
                    acc[s.name] = (eval_stmt(s, frame(full, rows, acc)), s.indices)
                else:
                    part = eval_stmt(s, f)
                    old, dims = acc[s.name]
                    if s.reduce is Reduce.MAX:
                        acc[s.name] = (torch.maximum(old, part), dims)
                    elif s.reduce is Reduce.MIN:
                        acc[s.name] = (torch.minimum(old, part), dims)
                    else:
                        for m, base in s.rescale:
                            if m in prev:
                                d = sub_rule(prev[m][0], acc[m][0])
                                corr = torch.exp(d) if base == "exp" else torch.exp2(d)
                                old = old * align(corr, acc[m][1], dims)
                        acc[s.name] = (old + part, dims)
        rows.update(acc)
        for st in p.epilogue:
            s = c.stmt(st.name)
            rows[s.name] = (eval_stmt(s, frame(full, rows)), s.indices)
    return {o: rows[o][0] for o in c.outputs}
