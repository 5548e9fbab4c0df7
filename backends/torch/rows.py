"""Evaluate a cascade a slice of rows at a time, so no intermediate is ever whole.

Block-sparse stage A (``compiler/selection.py``) holds ``[h, m, blocks]`` tensors; NSA's compressed
branch alone is ``16 x N x N/16`` floats, 4 GiB in fp32 at 32K. Where no statement sums over an
index (the rows: the query index) that another statement carries, and no selection runs along it,
the statements that carry it are evaluated over a slice of rows at a time and the others once,
over full ranges. The result equals ``run_reference``'s; only the peak memory and the cache
traffic change.
"""
from __future__ import annotations

import math

import torch

from einattn.ir import Cascade, Op, Reduce, bind_blocks

from .evaluator import Frame, eval_stmt
from .reference import run_reference

BUDGET = 1 << 22        # elements of the largest slice of one statement (16 MiB in fp32)


def row_index(c: Cascade, sizes: dict) -> str | None:
    """The largest index every row-carrying statement can be sliced along, or None."""
    outs = [i for s in c.stmts if s.name in c.outputs for i in s.indices]
    return next((i for i in sorted({i for s in c.stmts for i in s.indices}, key=lambda i: (-sizes.get(i, 0), i))
                 if i in outs and _sliceable(c, i)), None)


def _sliceable(c: Cascade, i: str) -> bool:
    """No selection along ``i`` (its amount is a number or a param, evaluated over full sizes), and
    no statement without ``i`` reading one with it (a sum over the rows). Intermediates are read
    with the indices they were defined with (``ir.verify``), and a block read ``T[.., i // B]`` of a
    value without ``i`` picks absolute rows of the whole value."""
    rows = {s.name for s in c.stmts if i in s.indices}
    return not any(s.select and s.indices[-1] == i or s.name not in rows and set(s.expr.reads()) & rows
                   for s in c.stmts)


def run_rows(c: Cascade, inputs: dict, sizes: dict, params: dict, dtype=torch.float64,
             budget: int = BUDGET) -> dict[str, torch.Tensor]:
    """``run_reference`` a slice of the row index at a time (``row_index``); the whole cascade at
    once where none can be sliced or one slice holds every row."""
    if c.blocks:
        sizes = bind_blocks(c, sizes, params)
    i = row_index(c, sizes)
    size = sizes.get(i, 0) if i else 0
    per_row = max((_per_row(s, i, sizes) for s in c.stmts if i in s.indices), default=0)
    step = max(1, budget // max(per_row, 1))
    if not i or step >= size:
        return run_reference(c, inputs, sizes, params, dtype)
    full = {k: (0, n) for k, n in sizes.items()}
    ins = {t.name: (inputs[t.name], t.indices) for t in c.inputs}
    values: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}
    rows = [s for s in c.stmts if i in s.indices]
    for s in c.stmts:
        if i not in s.indices:
            values[s.name] = (eval_stmt(s, Frame(full, ins, values, params, dtype)), s.indices)
    parts: dict[str, list[torch.Tensor]] = {o: [] for o in c.outputs if any(o == s.name for s in rows)}
    for a in range(0, size, step):
        frame = Frame({**full, i: (a, min(size, a + step))}, ins, dict(values), params, dtype)
        for s in rows:
            frame.values[s.name] = (eval_stmt(s, frame), s.indices)
        for o in parts:
            parts[o].append(frame.values[o][0])
    return {o: torch.cat(parts[o], dim=next(s for s in rows if s.name == o).indices.index(i)) if o in parts
            else values[o][0] for o in c.outputs}


def _per_row(s, i: str, sizes: dict) -> int:
    """Elements one row of ``s`` materialises: its value, every tensor it reads and, for a max or
    min (evaluated elementwise), its summed indices too; what does not carry ``i`` is not counted."""
    sets = [s.indices] + [tuple(u.index for u in e.arg[1]) for e in s.expr.walk() if e.op is Op.READ]
    if s.reduce is not Reduce.SUM:
        sets.append(s.all_indices)
    return max(math.prod(sizes[x] for x in set(t) if x != i) for t in sets if i in t)
