"""FlexAttention's API over einattn: ``flex_attention(q, k, v, score_mod, mask_mod)``.

A drop-in for ``torch.nn.attention.flex_attention.flex_attention``. The mods are traced
as FlexAttention traces them (``make_fx`` on 0-d example tensors: a float score and four
int32 indices b, h, q_idx, kv_idx), and each node of the traced graph becomes one einattn
``Expr``: the score is a read of ``S[b,h,m,n]``, the indices are ``b, h, m, n``, arithmetic,
comparisons, logic and the elementwise functions are the IR's operators, and a tensor the
mod captured (ALiBi slopes, a bias, document ids, prefix lengths) becomes an extra input
of the cascade, read at the indices the mod read it at. The cascade has the zoo's shape::

    S[b,h,m,n]  = Q[b,h,m,d] * K[b,h,n,d] * scale          (GQA: K[b, h // r, n, d])
    Sm[b,h,m,n] = where(mask_mod, score_mod(S), -inf)       (T = score_mod(S) without a mask)
    M[b,h,m]   max= Sm[b,h,m,n]
    P[b,h,m,n]  = exp(Sm[b,h,m,n] - M[b,h,m])
    L[b,h,m]    = P[b,h,m,n]
    O[b,h,m,e]  = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
    lse[b,h,m]  = M[b,h,m] + log(L[b,h,m])                  (return_lse=True)

Two in-memory caches make a loop of calls cheap: traces, keyed by a fingerprint of the mods
(code, closures, globals; captured tensors by layout, their values being call inputs), and
kernels, keyed by the cascade's structural hash, target, scale and interpret flag. The mask
needs no ``BlockMask``: the planner derives tile skipping from the mask expression itself.
See docs/flex.md.

Modules: ``convert`` (tracing the mods, their graphs as ``Expr``, captured tensors),
``cascade`` (the cascade around them), ``cache`` (mods' fingerprint, trace and kernel caches),
``call`` (``flex_attention``: arguments, shape checks, the call).

Example:
    >>> import torch
    >>> q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    >>> out = flex_attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx,
    ...                      target="reference")
    >>> out.shape, out.dtype
    (torch.Size([1, 2, 5, 8]), torch.float32)
"""
from . import cache
from .cache import clear_caches, compiled_kernel, mod_key, trace_cascade
from .call import flex_attention
from .cascade import FlexCascade, build_cascade
from .convert import Captured, trace_mod

# the cache dicts themselves (emptied in place, never rebound), which tests and docs inspect
_TRACES, _KERNELS = cache._TRACES, cache._KERNELS

__all__ = ["flex_attention", "trace_cascade", "trace_mod", "build_cascade", "compiled_kernel",
           "clear_caches", "mod_key", "FlexCascade", "Captured"]
