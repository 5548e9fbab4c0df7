"""``flex_attention`` itself: FlexAttention's arguments and shape checks, then the cached trace
and kernel, called on Q, K, V and the captured tensors."""
from __future__ import annotations

import torch

from einattn.ir import SpecError, UnsupportedError

from .cache import compiled_kernel, trace_cascade
from .convert import INDICES


def _mask_of(block_mask):
    """The mask_mod of a FlexAttention BlockMask; its block layout is not read."""
    from torch.nn.attention.flex_attention import BlockMask, noop_mask
    if not isinstance(block_mask, BlockMask):
        raise UnsupportedError(f"block_mask must be a torch BlockMask (einattn reads its mask_mod); found "
                               f"{type(block_mask).__name__}. Or pass the mask as mask_mod=")
    fn = block_mask.mask_mod
    if fn is noop_mask and not bool(block_mask.to_dense().all()):
        raise UnsupportedError("block_mask hides blocks but its mask_mod is noop_mask (a BlockMask built from "
                               "block indices); einattn masks by mask_mod only: pass the mask_mod the blocks "
                               "stand for")
    return None if fn is noop_mask else fn


def _check_shapes(q, k, v, enable_gqa: bool) -> bool:
    """FlexAttention's checks, with its messages; True when K/V heads are shared (GQA)."""
    for n, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise SpecError(f"{n} must be a 4-D tensor [B, H, L or S, E]",
                            found=f"{type(t).__name__} of shape {list(getattr(t, 'shape', []))}")
    if q.size(-1) != k.size(-1):
        raise SpecError("query and key must have the same head dim E",
                        found=f"E={q.size(-1)} (query) and {k.size(-1)} (key)")
    if k.shape[:3] != v.shape[:3]:
        raise SpecError("key and value must agree in B, Hkv and S", found=f"key {list(k.shape)}, value {list(v.shape)}")
    if q.size(0) != k.size(0):
        raise SpecError(f"Expect query and key/value to have the same batch size but got Bq={q.size(0)} and "
                        f"Bkv={k.size(0)}", fix="expand key and value to the query's batch")
    hq, hkv = q.size(1), k.size(1)
    if not enable_gqa and hq != hkv:
        raise SpecError(f"Expect query and key/value to have the same number of heads but got Hq={hq} and "
                        f"Hkv={hkv}", fix="Try setting enable_gqa=True for GQA")
    if enable_gqa and hq % hkv != 0:
        raise SpecError(f"Expect number of query heads to be a multiple of kv heads for GQA but got Hq={hq} "
                        f"and Hkv={hkv}")
    return hq != hkv


def flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, score_mod=None,
                   mask_mod=None, *, block_mask=None, scale: float | None = None, enable_gqa: bool = False,
                   return_lse: bool = False, target: str = "cpu", interpret: bool | None = None):
    """FlexAttention's semantics, compiled by einattn.

    Args:
        query: [B, Hq, L, E]; key: [B, Hkv, S, E]; value: [B, Hkv, S, Ev].
        score_mod: ``score_mod(score, b, h, q_idx, kv_idx) -> score`` on 0-d tensors, or None.
        mask_mod: ``mask_mod(b, h, q_idx, kv_idx) -> bool``, or None. A ``BlockMask`` in this
            place (torch's ``block_mask`` argument) is read as ``block_mask``.
        block_mask: a torch ``BlockMask``: only its ``mask_mod`` is used (einattn derives tile
            skipping from the mask itself); not together with ``mask_mod``.
        scale: the score scale; None means 1 / sqrt(E).
        enable_gqa: allow Hq != Hkv (Hq a multiple of Hkv; query head h reads KV head h // (Hq // Hkv)).
        return_lse: also return the natural-log logsumexp of each row's modded, masked scores
            (float32; -inf for a row whose keys are all masked).
        target, interpret: as ``einattn.compile`` (``cpu``, ``reference``, ``streaming``, ``cuda``...).

    Returns:
        the output [B, Hq, L, Ev] in the query's dtype, and with ``return_lse`` the lse [B, Hq, L].

    Raises:
        UnsupportedError: a mod does something einattn cannot express (the message names the op).
        SpecError: a ValueError, for shapes FlexAttention refuses too (GQA without enable_gqa, ...).

    >>> q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    >>> out, lse = flex_attention(q, k, v, enable_gqa=True, return_lse=True, target="reference")
    >>> out.shape, lse.shape
    (torch.Size([1, 4, 6, 8]), torch.Size([1, 4, 6]))
    """
    if type(mask_mod).__name__ == "BlockMask":
        mask_mod, block_mask = None, mask_mod
    if block_mask is not None:
        if mask_mod is not None:
            raise SpecError("both mask_mod and block_mask given", fix="pass one (einattn reads the "
                            "block_mask's mask_mod only)")
        mask_mod = _mask_of(block_mask)
    gqa = _check_shapes(query, key, value, enable_gqa)
    work = torch.float64 if query.dtype == torch.float64 else torch.float32
    fc = trace_cascade(score_mod, mask_mod, gqa=gqa, lse=return_lse, score_dtype=work)
    kernel = compiled_kernel(fc.cascade, target, scale, interpret, fc.hash)
    sizes = dict(zip(INDICES, (query.size(0), query.size(1), query.size(2), key.size(2))))
    res = kernel(query, key, value, *(c.view(sizes, work) for c in fc.captured))
    if not return_lse:
        return res.to(query.dtype)
    return res[0].to(query.dtype), res[1].to(torch.float32)
