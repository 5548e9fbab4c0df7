"""Evaluate a cascade over blocks of one index: [m, n] outputs without all of [m, n] at once.

The backward's ``tiles`` stage (``compiler/backward_plan.py``) computes a gradient that is
itself an ``[m, n]`` tensor (a dense bias): every statement it needs keeps the query index
or is elementwise in it, so it runs block by block of queries, each block over all keys,
holding one block's tiles at a time.
"""
from __future__ import annotations

import torch

from einattn.ir import Cascade

from .evaluator import Frame, eval_stmt

BLOCK_ELEMENTS = 1 << 22        # elements of the largest tile of one block (16 MiB in float32)


def run_blocks(c: Cascade, inputs: dict, sizes: dict, params: dict, index: str,
               dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The outputs of ``c`` (each carrying ``index``; no statement reduces over it)."""
    widest = max((_elements(s.all_indices, sizes, index) for s in c.stmts), default=1)
    block = max(1, min(sizes[index], BLOCK_ELEMENTS // max(widest, 1)))
    ins = {t.name: (inputs[t.name], t.indices) for t in c.inputs}
    device = next(iter(inputs.values())).device
    outs = {o: torch.empty([sizes[i] for i in c.stmt(o).indices], dtype=dtype, device=device) for o in c.outputs}
    for a in range(0, sizes[index], block):
        b = min(a + block, sizes[index])
        ranges = {i: (0, n) for i, n in sizes.items()}
        ranges[index] = (a, b)
        values: dict = {}
        for s in c.stmts:
            values[s.name] = (eval_stmt(s, Frame(ranges, ins, values, params, dtype, device=device)), s.indices)
        for o in c.outputs:
            outs[o].narrow(c.stmt(o).indices.index(index), a, b - a).copy_(values[o][0])
    return outs


def _elements(dims, sizes: dict, index: str) -> int:
    out = 1
    for i in dims:
        if i != index:
            out *= sizes[i]
    return out
