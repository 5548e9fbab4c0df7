"""Selection statements (spec v1.1): ``topk`` and ``topp`` along the last axis of a score.

The rules (docs/spec.md, "Selection"), the same on every target:

- NaN and ``-inf`` scores are never kept; ``+inf`` scores are always kept (the always-included
  blocks: own, initial, local), whether or not they fit in the amount.
- ``topk(s, k)`` keeps the k largest scores, the ``+inf`` ones counted in k; ties go to the
  lower coordinate. k larger than the number of candidates keeps them all; k = 0 keeps only
  the ``+inf`` scores.
- ``topp(s, p)`` keeps the ``+inf`` scores and the smallest prefix, in the same order, of the
  finite ones whose softmax mass (over the finite scores of the row) reaches p; p = 0 keeps
  none of them, p = 1 all of them.
"""
from __future__ import annotations

import torch

from einattn.ir import SpecError, Stmt


def amount(s: Stmt, value: float) -> float:
    kind = s.select[0]
    if kind == "topk" and (not float(value).is_integer() or value < 0):
        raise SpecError(f"'{s.name}' = topk(..., k): k must be a non-negative integer", loc=s.loc,
                        found=repr(value))
    if kind == "topp" and not 0.0 <= value <= 1.0:
        raise SpecError(f"'{s.name}' = topp(..., p): p must lie in [0, 1]", loc=s.loc, found=repr(value))
    return value


def select(score: torch.Tensor, kind: str, value: float) -> torch.Tensor:
    """1.0 at the kept coordinates of the last axis, 0.0 elsewhere (``score``'s dtype)."""
    x = torch.where(torch.isnan(score), torch.full_like(score, float("-inf")), score)
    always = x == float("inf")
    cand = x > float("-inf")
    order = torch.sort(x, dim=-1, descending=True, stable=True).indices    # ties: lower coordinate first
    if kind == "topk":
        k = min(int(value), x.shape[-1])
        keep = torch.zeros_like(cand).scatter(-1, order[..., :k], True) & cand
    else:
        finite = cand & ~always
        xf = torch.where(finite, x, torch.full_like(x, float("-inf")))
        mx = xf.amax(dim=-1, keepdim=True) if x.shape[-1] else xf
        e = torch.where(finite, torch.exp(xf - torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)),
                        torch.zeros_like(x))
        mass = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        ms = mass.gather(-1, order)
        before = torch.cumsum(ms, dim=-1) - ms                  # mass of the finite scores ranked above
        kept = ((before < value) | (value >= 1.0)) & finite.gather(-1, order)    # p = 1: all, whatever the rounding
        keep = torch.zeros_like(cand).scatter(-1, order, kept)
    return (keep | always).to(score.dtype)


def as_lists(visit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) of a boolean ``[.., K]``: int32, the true positions ascending first, then the
    others ascending (FlexAttention's BlockMask layout)."""
    order = torch.sort((~visit).to(torch.int8), dim=-1, stable=True).indices
    return visit.sum(-1).to(torch.int32), order.to(torch.int32)


def block_lists(mask: torch.Tensor, tile: int) -> dict[str, torch.Tensor]:
    """FlexAttention's ``BlockMask`` layout of a selection ``[.., M, NB]`` (nonzero = key block kept
    for that query token), for query tiles of ``tile`` tokens: a tile visits the union of its
    tokens' blocks. ``kv_num_blocks [.., MT]`` and ``kv_indices [.., MT, NB]`` (int32, the kept
    blocks ascending first; the slots past the count hold the others, ascending), and the
    transposed lists a backward needs, ``q_num_blocks [.., NB]``, ``q_indices [.., NB, MT]``."""
    m, nb = mask.shape[-2:]
    mt = -(-m // tile)
    pad = torch.zeros(*mask.shape[:-2], mt * tile - m, nb, dtype=torch.bool, device=mask.device)
    union = torch.cat([mask != 0, pad], -2).reshape(*mask.shape[:-2], mt, tile, nb).any(-2)

    kv_num, kv_idx = as_lists(union)
    q_num, q_idx = as_lists(union.transpose(-1, -2))
    return {"kv_num_blocks": kv_num, "kv_indices": kv_idx, "q_num_blocks": q_num, "q_indices": q_idx}
