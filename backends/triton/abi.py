"""What the launcher and the ahead-of-time compiler both pass to a rendered kernel: its
compile-time constants, the dot precision and the output dtypes. Shared by
``backend.py`` (launch) and ``aot.py`` (``triton.compile``), which need not import each other.
"""
from __future__ import annotations

import math

import torch

from einattn.ir import eval_scalar

from .config import TritonConfig
from .render import Rendered


def next_pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, math.ceil(math.log2(max(x, 1)))))


def constexpr_values(r: Rendered, sizes: dict, config: TritonConfig, dot_precision: str,
                     params: dict | None = None, tma: bool = False) -> dict:
    """The compile-time constants of a call. ``FOLD_<score>`` (render.ScoreFold) is the sign of the
    score's scalars at ``params``; without params (ahead of time) the scalars are taken as positive,
    as every zoo scale is. ``TMA``: :func:`tma_usable`."""
    out = {}
    for i in (*r.contract, *r.value):
        out[f"SIZE_{i}"] = int(sizes[i])
        out[f"BLOCK_{i}"] = next_pow2(int(sizes[i]))
    out["BLOCK_M"], out["BLOCK_N"] = config.BLOCK_M, config.BLOCK_N
    if "BLOCK_Q" in r.constexprs:         # the decode program: a resolved config (PACK >= 1)
        from .config import decode_rows
        out["BLOCK_Q"], out["BLOCK_M"] = decode_rows(int(sizes[r.query]), config.BLOCK_M, config.PACK)
        out["PACK"] = config.PACK
    out["DOT_PRECISION"] = dot_precision
    out["EVEN_N"] = int(sizes[r.key]) % config.BLOCK_N == 0
    for flag, scalars in r.folds:
        try:
            c = 1.0 if params is None else float(eval_scalar(scalars, params))
        except (ValueError, ZeroDivisionError, OverflowError):      # no number: keep the scale
            c = math.nan
        out[flag] = bool(0.0 < c < math.inf)
    for p in r.key_blocks:              # a key tile lies in one block of p (ahead of time: --param p)
        v = None if params is None else params.get(p)
        out[f"KB_{p}"] = v is not None and float(v) % config.BLOCK_N == 0
    if "TMA" in r.constexprs:
        out["TMA"] = bool(tma)
    if "KV_SPLITS" in r.constexprs:
        out["KV_SPLITS"] = config.KV_SPLITS
    return out


TMA_ALIGN = 16      # bytes: tensor-descriptor base addresses and strides (but the innermost, 1)


def tma_usable(r: Rendered, capability: int | None, sizes: dict, dims: dict, tensors: dict | None = None,
               dtype: torch.dtype | None = None) -> bool:
    """Whether the key-side tiles load through tensor descriptors (TMA): a Hopper or later GPU
    (``capability`` >= 90) and, for every read ``r.tma`` lists, the feature dim innermost (stride
    1), a 16-byte key stride and 16-byte base addresses (grid strides along dims longer than 1).
    ``tensors`` are the call's; without them (ahead of time), contiguous ``dtype`` tensors of
    ``sizes`` over ``dims`` (input name -> its indices) at an aligned address."""
    if not r.tma or (capability or 0) < 90:
        return False
    for name, jk, jf in r.tma:
        if tensors is None:
            strides = [contiguous_stride(dims[name], j, sizes) for j in range(len(dims[name]))]
            shape, ptr, size = [int(sizes[i]) for i in dims[name]], 0, torch.empty((), dtype=dtype).element_size()
        else:
            t = tensors[name]
            strides, shape, ptr, size = t.stride(), t.shape, t.data_ptr(), t.element_size()
        if strides[jf] != 1 or ptr % TMA_ALIGN:
            return False
        # the key stride is the descriptor's; a grid stride moves the base (not along a dim of size 1)
        if any((shape[j] > 1 or j == jk) and (strides[j] * size) % TMA_ALIGN for j in range(len(strides))
               if j != jf):
            return False
    return True


def dot_precision(dtypes) -> str:
    """Always "ieee": fp32 inputs multiply in full fp32 (TF32 would miss the 1e-4 accuracy the tests
    hold), and fp16/bf16 products are exact anyway (AMD accepts no "tf32")."""
    return "ieee"


def output_dtype(r: Rendered, dims, compute: torch.dtype) -> torch.dtype:
    """Outputs with the value index take the inputs' dtype; per-row outputs (lse) stay fp32."""
    return compute if any(i in r.value for i in dims) else torch.float32


def workspace_shapes(r: Rendered, sizes: dict, config: TritonConfig) -> dict:
    """The fp32 workspace of each state of a split kernel: [KV_SPLITS, programs of grid axis 1,
    query length(, padded value width)], as the kernels index it."""
    progs = 1
    for g in r.grid:
        progs *= int(sizes[g])
    base = [config.KV_SPLITS, progs, int(sizes[r.query])]
    return {w: base + ([next_pow2(int(sizes[e]))] if e is not None else []) for w, e in r.workspaces}


def contiguous_stride(dims, j: int, sizes: dict) -> int:
    """The stride of dim ``j`` of a contiguous tensor over ``dims`` at these sizes."""
    out = 1
    for i in dims[j + 1:]:
        out *= int(sizes[i])
    return out
