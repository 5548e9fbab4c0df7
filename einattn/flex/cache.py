"""The two in-memory caches of ``flex_attention``: traces, keyed by a fingerprint of the mods
(``mod_key``), and kernels, keyed by the cascade's structural hash, target, scale and interpret flag."""
from __future__ import annotations

import functools
import threading
import types

import torch

from einattn.ir import Cascade

from ..kernel import Kernel, compile as compile_spec
from .cascade import FlexCascade, build_cascade
from .convert import SCORE, TRUE, Captured, Converter, trace_mod

# Traces are reused while the mods' fingerprint holds. A trace depends on the mods' code and
# on every value they read: closure cells, globals, defaults, the helpers they call. Plain
# values enter the fingerprint by value; tensors by layout (shape, strides, dtype, device,
# which of them alias), 0-d ones also by value (they become constants). A captured tensor's
# values are a call input, so a new tensor of the same layout (the next batch's document ids)
# reuses the trace: the trace finds it at the same place. A mod that reads anything else (a
# list, an object's attribute, an nn.Module, a module outside torch/math) is traced on every
# call, as is one that computes a constant from a captured tensor's values
# (``(slopes * 2)[h]``): always correct, about 6 ms per mod.

_TRACES: dict[tuple, FlexCascade] = {}
MAX_TRACES = 256
_KERNELS: dict[tuple, Kernel] = {}
_LOCK = threading.Lock()
_PLAIN = (type(None), bool, int, float, complex, str, torch.dtype, torch.device)
_STABLE_MODULES = ("torch", "math", "operator", "functools", "builtins", "numpy")


def mod_key(fn, tensors: list):
    """A hashable fingerprint of a mod and of everything it reads, or None when it reads
    something the fingerprint cannot see. Appends the tensors it finds to ``tensors``."""
    return ("none",) if fn is None else _value_key(fn, 0, frozenset(), tensors, {})


def _value_key(v, depth: int, seen: frozenset, tensors: list, alias: dict):
    if isinstance(v, _PLAIN):
        return (type(v).__name__, v)
    if isinstance(v, torch.Tensor):
        layout = (v.data_ptr(), tuple(v.shape), v.stride(), v.dtype, str(v.device))
        same = alias.setdefault(layout, len(tensors))
        tensors.append(v)
        value = v.item() if v.dim() == 0 and v.device.type != "meta" else None
        return ("tensor", layout[1:], same, value)
    if isinstance(v, types.ModuleType):
        return ("module", v.__name__) if v.__name__.split(".")[0] in _STABLE_MODULES else None
    if isinstance(v, (types.BuiltinFunctionType, torch._ops.OpOverloadPacket, torch._ops.OpOverload, type)):
        return ("id", id(v))
    rec = functools.partial(_value_key, depth=depth + 1, seen=seen, tensors=tensors, alias=alias)
    if isinstance(v, tuple):
        parts = tuple(rec(x) for x in v)
        return None if None in parts else ("tuple", parts)
    if isinstance(v, functools.partial):
        parts = (rec(v.func), rec(v.args), rec(tuple(sorted(v.keywords.items()))))
        return None if None in parts else ("partial", parts)
    if isinstance(v, types.FunctionType) and depth <= 8:
        if id(v) in seen:
            return ("recursive", v.__code__)
        rec = functools.partial(rec, seen=seen | {id(v)})
        cells = tuple(_cell(c) for c in v.__closure__ or ())
        names = sorted(n for n in _code_names(v.__code__) if n in v.__globals__)
        parts = [rec(x) for x in (*cells, *(v.__globals__[n] for n in names), v.__defaults__,
                                  tuple(sorted((v.__kwdefaults__ or {}).items())))]
        return None if None in parts else ("function", v.__code__, tuple(names), tuple(parts))
    return None


def _cell(c):
    try:
        return c.cell_contents
    except ValueError:                      # a cell not filled yet
        return "<empty cell>"


def _code_names(code) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


def trace_cascade(score_mod=None, mask_mod=None, *, gqa: bool = False, lse: bool = False,
                  score_dtype: torch.dtype = torch.float32) -> FlexCascade:
    """Trace the mods and build the cascade (what ``flex_attention`` compiles); a trace is
    reused while the mods' fingerprint (``mod_key``) is unchanged.

    >>> fc = trace_cascade(mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)
    >>> print(fc.cascade.stmts[1])
    Sm[b,h,m,n] = where(n <= m, S[b, h, m, n], -inf)
    """
    tensors: list = []
    keys = (mod_key(score_mod, tensors), mod_key(mask_mod, tensors))
    key = None if None in keys else (keys, gqa, lse, score_dtype)
    hit = _TRACES.get(key) if key is not None else None
    if hit is not None:
        return FlexCascade(hit.cascade, tuple(c.rebind(tensors) for c in hit.captured), hit.hash)
    conv = Converter(tensors)
    score = mask = None
    if score_mod is not None:
        score = conv.convert(trace_mod(score_mod, "score_mod", score_dtype), "score_mod")
        score = None if score == SCORE else score
    if mask_mod is not None:
        mask = conv.convert(trace_mod(mask_mod, "mask_mod"), "mask_mod")
        mask = None if mask == TRUE else mask
    c = build_cascade(score, mask, conv.captured, gqa=gqa, lse=lse)
    fc = FlexCascade(c, tuple(conv.captured), c.structural_hash(), conv.reusable)
    if key is not None and fc.reusable:
        with _LOCK:
            if len(_TRACES) >= MAX_TRACES:
                _TRACES.pop(next(iter(_TRACES)))
            # the memo holds no caller's tensor (rebind finds it again); constants the mod made stay
            kept = tuple(x if x.source is None else Captured(x.name, None, x.subs, x.source) for x in conv.captured)
            _TRACES[key] = FlexCascade(c, kept, fc.hash)
    return fc


def clear_caches() -> None:
    """Forget the traces and kernels kept in memory."""
    with _LOCK:
        _TRACES.clear()
        _KERNELS.clear()


def compiled_kernel(cascade: Cascade, target: str = "cpu", scale: float | None = None,
                    interpret: bool | None = None, cascade_hash: str | None = None) -> Kernel:
    """The kernel of a traced cascade, compiled on first use and kept in memory, keyed by the
    cascade's structural hash, the target, scale and interpret flag."""
    key = (cascade_hash or cascade.structural_hash(), str(target), scale, interpret)
    k = _KERNELS.get(key)
    if k is None:
        with _LOCK:
            k = _KERNELS.get(key)
            if k is None:
                params = {} if scale is None else {"scale": float(scale)}
                k = _KERNELS[key] = compile_spec(cascade, target=target, interpret=interpret, **params)
    return k
