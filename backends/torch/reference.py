"""The float64 reference executor: every statement materialised over full ranges.

The oracle every kernel is tested against. ``running(..)`` reads see complete
values and rescale annotations are ignored, so it runs the original and every
rewritten cascade alike (and they must agree).
"""
from __future__ import annotations

import torch

from einattn.ir import Cascade, bind_blocks

from .evaluator import Frame, eval_stmt


def run_reference(c: Cascade, inputs: dict, sizes: dict, params: dict,
                  dtype=torch.float64) -> dict[str, torch.Tensor]:
    if c.blocks:
        sizes = bind_blocks(c, sizes, params)
    full = {i: (0, n) for i, n in sizes.items()}
    ins = {t.name: (inputs[t.name], t.indices) for t in c.inputs}
    values: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}
    for s in c.stmts:
        values[s.name] = (eval_stmt(s, Frame(full, ins, values, params, dtype)), s.indices)
    return {o: values[o][0] for o in c.outputs}
