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

Example:
    >>> import torch
    >>> q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    >>> out = flex_attention(q, k, v, mask_mod=lambda b, h, q_idx, kv_idx: kv_idx <= q_idx,
    ...                      target="reference")
    >>> out.shape, out.dtype
    (torch.Size([1, 2, 5, 8]), torch.float32)
"""
from __future__ import annotations

import contextlib
import functools
import threading
import types
from dataclasses import dataclass

import torch

from einattn.ir import (COMPARE, LOGIC, Cascade, Expr, Op, ParamDecl, Reduce, SpecError, Stmt, Sub,
                        TensorDecl, UnsupportedError, verify)

from .kernel import Kernel, compile as compile_spec

INDICES = ("b", "h", "m", "n")                  # what b, h, q_idx, kv_idx are in the cascade
ARG_NAMES = ("b", "h", "q_idx", "kv_idx")
TRUE = Expr(Op.EQ, (Expr.const(0.0), Expr.const(0.0)))
FALSE = Expr(Op.NE, (Expr.const(0.0), Expr.const(0.0)))
SCORE = Expr.read("S", tuple(Sub(i) for i in INDICES))

# aten op name -> IR op, for the ops that map one-to-one
_UNARY = {"exp": Op.EXP, "exp2": Op.EXP2, "log": Op.LOG, "log2": Op.LOG2, "sqrt": Op.SQRT,
          "rsqrt": Op.RSQRT, "tanh": Op.TANH, "sigmoid": Op.SIGMOID, "relu": Op.RELU, "abs": Op.ABS,
          "sign": Op.SIGN, "square": Op.SQUARE, "neg": Op.NEG}
_BINARY = {"mul": Op.MUL, "floor_divide": Op.FLOORDIV, "remainder": Op.MOD, "pow": Op.POW,
           "minimum": Op.MIN, "maximum": Op.MAX, "lt": Op.LT, "le": Op.LE, "gt": Op.GT, "ge": Op.GE,
           "eq": Op.EQ, "ne": Op.NE}
_LOGIC = {"logical_and": Op.AND, "bitwise_and": Op.AND, "logical_or": Op.OR, "bitwise_or": Op.OR,
          "logical_not": Op.NOT, "bitwise_not": Op.NOT, "logical_xor": None, "bitwise_xor": None}
_PASS = ("lift_fresh_copy", "clone", "detach", "alias", "contiguous")      # the value unchanged
_FILL = {"zeros_like": 0.0, "ones_like": 1.0, "new_zeros": 0.0, "new_ones": 1.0}
SUPPORTED = ", ".join(sorted({*_UNARY, *_BINARY, *_LOGIC, *_FILL, "add", "sub", "rsub", "div", "reciprocal",
                              "where", "clamp", "clamp_min", "clamp_max", "max(a, b)", "min(a, b)",
                              "softplus", "floor", "ceil", "trunc", "log1p", "expm1", "to(dtype)",
                              "full_like", "new_full", "t[i, ...] of a captured tensor"}))


@dataclass(frozen=True)
class Captured:
    """A tensor a mod captured, read at ``subs`` (index names): the cascade input ``name``.
    ``source`` is where a reused trace finds it again: (position in the mods' fingerprint,
    constant subscripts applied); None for a constant the mod made itself."""
    name: str
    tensor: torch.Tensor
    subs: tuple[str, ...]
    source: tuple | None = None

    def view(self, sizes: dict[str, int], dtype: torch.dtype) -> torch.Tensor:
        """The tensor as the kernel reads it: cut to the sizes of the indices it is read at
        (a mod only reads coordinates below them), as ``dtype``."""
        t = self.tensor
        for j, i in enumerate(self.subs):
            if t.shape[j] < sizes[i]:
                raise SpecError(f"a mod reads captured tensor {self.name} (shape {list(t.shape)}) at "
                                f"{ARG_NAMES[INDICES.index(i)]} along its dim {j}, past its end",
                                expected=f"size >= {sizes[i]}", found=f"{t.shape[j]}",
                                fix="capture a tensor that covers every index of the call")
            t = t.narrow(j, 0, sizes[i])
        return t.detach().to(dtype)

    def rebind(self, tensors: list) -> "Captured":
        if self.source is None:
            return self
        i, selects = self.source
        t = tensors[i]
        for dim, at in selects:
            t = t.select(dim, at)
        return Captured(self.name, t, self.subs, self.source)


@dataclass(frozen=True)
class FlexCascade:
    """A traced FlexAttention call: the cascade and the captured tensors it reads (inputs after
    Q, K, V, in order)."""
    cascade: Cascade
    captured: tuple[Captured, ...]
    hash: str = ""                  # cascade.structural_hash(), computed once per trace
    reusable: bool = True           # False when a constant was computed from a captured tensor's values


@dataclass(frozen=True)
class _Partial:
    """A captured tensor read at fewer indices than it has dims (``t[h]`` of a [H, S] tensor)."""
    tensor: torch.Tensor
    subs: tuple[str, ...]


# -- tracing ---------------------------------------------------------------------------

def trace_mod(fn, kind: str, score_dtype: torch.dtype = torch.float32) -> torch.fx.GraphModule:
    """Trace ``score_mod`` (``kind="score_mod"``) or a ``mask_mod`` as FlexAttention does:
    ``make_fx`` on 0-d example tensors, ``t[i]`` recorded as ``aten.index``."""
    from torch.fx.experimental.proxy_tensor import make_fx
    try:
        from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex
    except ImportError:                           # older torch: plain __getitem__ tracing
        TransformGetItemToIndex = contextlib.nullcontext
    args = [torch.zeros((), dtype=torch.int) for _ in range(4)]
    if kind == "score_mod":
        args.insert(0, torch.zeros((), dtype=score_dtype))
    try:
        with TransformGetItemToIndex():
            return make_fx(fn)(*args)
    except UnsupportedError:
        raise
    except Exception as e:
        msg = str(e).strip().split(". ")[0][:300]
        raise UnsupportedError(
            f"{kind} could not be traced ({type(e).__name__}: {msg}). einattn traces mods as FlexAttention "
            f"does, on 0-d tensors: write them with tensor operations on score, b, h, q_idx, kv_idx "
            f"(torch.where instead of `if` on their values, no .item())") from e


class _Converter:
    """Traced graphs -> Exprs, one node to one Expr; collects the captured tensors of both mods.

    ``tensors`` are the tensors the mods' fingerprint found, in order: a captured tensor that
    is one of them (or a constant subscript of one) is recorded by position, so a reused trace
    reads the tensor the mod holds at the next call.
    """

    def __init__(self, tensors: list):
        self.captured: list[Captured] = []
        self.reusable = True
        self._names: dict[tuple, str] = {}
        self._walk = {id(t): i for i, t in reversed(list(enumerate(tensors)))}
        self._source: dict[int, tuple | None] = {}      # id(concrete tensor) -> source, "derived"

    def convert(self, gm: torch.fx.GraphModule, kind: str) -> Expr:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        leaves = [SCORE] if kind == "score_mod" else []
        leaves += [Expr(Op.INDEX, (), i) for i in INDICES]
        if len(placeholders) != len(leaves):
            raise UnsupportedError(f"{kind} takes {len(placeholders)} arguments; expected {len(leaves)}")
        env = dict(zip(placeholders, leaves))
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                t = _attr(gm, node.target)
                i = self._walk.get(id(t))
                self._source[id(t)] = None if i is None else (i, ())
                env[node] = t
            elif node.op == "call_function":
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: env[a])
                env[node] = self.op(node, args, kwargs, kind)
            elif node.op == "output":
                out = node.args[0]
                if isinstance(out, (tuple, list)):
                    raise UnsupportedError(f"{kind} returns {len(out)} values; expected one 0-d tensor")
                e = self.expr(env[out] if isinstance(out, torch.fx.Node) else out, kind)
                return _bool(e) if kind == "mask_mod" else _num(e)
            elif node.op != "placeholder":
                raise UnsupportedError(f"{kind}: traced node '{node.op}' ({node.target}) is not supported")
        raise AssertionError("graph without output")

    def fold(self, target, args, kwargs):
        """An op that depends on no index: computed now, as torch computes it."""
        ins = [x for x in _flat((args, kwargs)) if isinstance(x, torch.Tensor)]
        out = target(*args, **kwargs)
        derived = any(self._source.get(id(x), "derived") is not None for x in ins)
        for o in _flat(out):
            if isinstance(o, torch.Tensor):
                self._source[id(o)] = "derived" if derived else None
        return out

    def op(self, node, args, kwargs, kind: str):
        target = node.target
        if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
            raise UnsupportedError(f"{kind}: '{target}' is not an aten operation; supported: {SUPPORTED}")
        if not any(isinstance(a, (Expr, _Partial)) for a in _flat((args, kwargs))):
            return self.fold(target, args, kwargs)
        name, a = target._opname, args

        def num(i):
            return _num(self.expr(a[i], kind))

        def boolean(i):
            return _bool(self.expr(a[i], kind))

        def scaled(e):                      # add/sub's alpha
            al = kwargs.get("alpha", 1)
            return e if al == 1 else Expr(Op.MUL, (Expr.const(al), e))
        if name == "index" and target._overloadname == "Tensor":
            return self.index(a[0], a[1], kind)
        if name in _PASS:
            return a[0]
        if name in ("_to_copy", "to"):
            dtype = kwargs.get("dtype") or next((x for x in a[1:] if isinstance(x, torch.dtype)), None)
            return a[0] if dtype is None else _convert(self.expr(a[0], kind), dtype)
        if name in _UNARY:
            return Expr(_UNARY[name], (num(0),))
        if name in _BINARY:
            return Expr(_BINARY[name], (num(0), num(1)))
        if name in ("max", "min") and target._overloadname == "other":
            return Expr(Op.MAX if name == "max" else Op.MIN, (num(0), num(1)))
        if name in _LOGIC:
            if node.meta.get("val") is not None and node.meta["val"].dtype != torch.bool:
                raise UnsupportedError(f"{kind}: {name} on integers (bitwise arithmetic) has no einattn "
                                       f"counterpart; &, |, ~ and ^ are supported on booleans (comparisons)")
            if _LOGIC[name] is Op.NOT:
                return Expr(Op.NOT, (boolean(0),))
            x, y = boolean(0), boolean(1)
            if _LOGIC[name] is None:        # xor
                return Expr(Op.OR, (Expr(Op.AND, (x, Expr(Op.NOT, (y,)))), Expr(Op.AND, (Expr(Op.NOT, (x,)), y))))
            return Expr(_LOGIC[name], (x, y))
        if name in ("add", "sub"):
            return Expr(Op.ADD if name == "add" else Op.SUB, (num(0), scaled(num(1))))
        if name == "rsub":
            return Expr(Op.SUB, (num(1), scaled(num(0))))
        if name == "div":
            x, y, mode = num(0), num(1), kwargs.get("rounding_mode")
            if mode is None:
                return Expr(Op.DIV, (x, y))
            if mode == "floor":
                return Expr(Op.FLOORDIV, (x, y))
            return Expr(Op.MUL, (Expr(Op.MUL, (Expr(Op.SIGN, (x,)), Expr(Op.SIGN, (y,)))),
                                 Expr(Op.FLOORDIV, (Expr(Op.ABS, (x,)), Expr(Op.ABS, (y,))))))
        if name == "reciprocal":
            return Expr(Op.DIV, (Expr.const(1.0), num(0)))
        if name in ("clamp", "clamp_min", "clamp_max"):
            lo = a[1] if len(a) > 1 else kwargs.get("min")
            hi = a[2] if len(a) > 2 else kwargs.get("max")
            if name == "clamp_max":
                lo, hi = None, lo
            e = num(0)
            if lo is not None:
                e = Expr(Op.MAX, (e, _num(self.expr(lo, kind))))
            if hi is not None:
                e = Expr(Op.MIN, (e, _num(self.expr(hi, kind))))
            return e
        if name == "where":
            c, x, y = boolean(0), self.expr(a[1], kind), self.expr(a[2], kind)
            if _is_bool(x) and _is_bool(y):
                return Expr(Op.OR, (Expr(Op.AND, (c, x)), Expr(Op.AND, (Expr(Op.NOT, (c,)), y))))
            return Expr(Op.WHERE, (c, _num(x), _num(y)))
        if name == "softplus":
            beta, x = (a[1] if len(a) > 1 else kwargs.get("beta", 1)), num(0)
            if beta == 1:
                return Expr(Op.SOFTPLUS, (x,))
            return Expr(Op.DIV, (Expr(Op.SOFTPLUS, (Expr(Op.MUL, (Expr.const(beta), x)),)), Expr.const(beta)))
        if name in ("floor", "ceil", "trunc"):
            x = num(0)
            if name == "floor":
                return _floor(x)
            if name == "ceil":
                return Expr(Op.NEG, (_floor(Expr(Op.NEG, (x,))),))
            return _trunc(x)
        if name == "log1p":
            return Expr(Op.LOG, (Expr(Op.ADD, (Expr.const(1.0), num(0))),))
        if name == "expm1":
            return Expr(Op.SUB, (Expr(Op.EXP, (num(0),)), Expr.const(1.0)))
        if name in _FILL or name in ("full_like", "new_full"):
            if name.startswith("new_") and list(a[1]):
                raise UnsupportedError(f"{kind}: {name} of shape {list(a[1])}; a mod computes one 0-d value")
            value = _FILL.get(name, a[2] if name == "new_full" else a[1] if len(a) > 1 else None)
            return _constant(torch.tensor(value, dtype=kwargs.get("dtype") or node.meta["val"].dtype))
        raise UnsupportedError(f"{kind}: aten.{name}.{target._overloadname} has no einattn counterpart; "
                               f"supported: {SUPPORTED}")

    def index(self, base, idx, kind: str):
        """``t[i, j, ...]`` of a captured tensor: its subscripts must be b, h, q_idx or kv_idx
        themselves (or constants); a read at a computed position is a gather einattn cannot plan."""
        if isinstance(base, _Partial):
            t, subs = base.tensor, base.subs
        elif isinstance(base, torch.Tensor):
            t, subs = base, ()
        else:
            raise UnsupportedError(f"{kind}: indexing '{_show(self.expr(base, kind))}', a computed value; only "
                                   f"captured tensors can be indexed, at b, h, q_idx, kv_idx")
        shape = list(t.shape)
        for x in idx:
            if x is None:
                raise UnsupportedError(f"{kind}: a slice or None subscript inside a mod; slice the captured "
                                       f"tensor outside the mod and index it at b, h, q_idx, kv_idx")
            if isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_floating_point():
                src = self._source.get(id(t), "derived")
                if self._source.get(id(x), "derived") == "derived":
                    self.reusable = False           # a subscript computed from captured values
                t = t.select(len(subs), int(x))
                self._source[id(t)] = src if src in (None, "derived") else (src[0], src[1] + ((len(subs), int(x)),))
                continue
            e = self.expr(x, kind)
            if e.op is not Op.INDEX:
                raise UnsupportedError(
                    f"{kind}: captured tensor of shape {shape} is read at '{_show(e)}', a computed subscript (a "
                    f"data-dependent gather); einattn reads captured tensors at b, h, q_idx, kv_idx "
                    f"themselves. Fix: precompute a tensor read at plain indices (e.g. capture t[offset:] "
                    f"and read it at kv_idx instead of t[kv_idx + offset])")
            if e.arg in subs:
                raise UnsupportedError(f"{kind}: captured tensor of shape {shape} read twice at "
                                       f"{ARG_NAMES[INDICES.index(e.arg)]} (a diagonal); capture "
                                       f"torch.diagonal(t) instead")
            subs += (e.arg,)
        return _Partial(t, subs) if len(subs) < t.dim() else self.read(t, subs)

    def read(self, t: torch.Tensor, subs: tuple[str, ...]) -> Expr:
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device, subs)
        name = self._names.get(key)
        if name is None:
            source = self._source.get(id(t), "derived")
            if source == "derived":
                self.reusable = False
                source = None
            name = self._names[key] = f"X{len(self.captured)}"
            self.captured.append(Captured(name, t, subs, source))
        return Expr.read(name, tuple(Sub(i) for i in subs))

    def expr(self, v, kind: str) -> Expr:
        if isinstance(v, Expr):
            return v
        if isinstance(v, _Partial):
            raise UnsupportedError(f"{kind}: captured tensor of shape {list(v.tensor.shape)} read at "
                                   f"{len(v.subs)} indices only; index every dim (a mod computes one value)")
        if isinstance(v, torch.Tensor):
            if v.dim() != 0:
                raise UnsupportedError(f"{kind}: captured tensor of shape {list(v.shape)} used whole; "
                                       f"read it at b, h, q_idx, kv_idx (t[h], t[q_idx, kv_idx])")
            if self._source.get(id(v), "derived") == "derived":
                self.reusable = False               # a constant computed from captured values
            return _constant(v)
        if isinstance(v, (bool, int, float)):
            return _constant(torch.tensor(v))
        raise UnsupportedError(f"{kind}: argument {v!r} ({type(v).__name__}) is not supported")


def _show(e: Expr) -> str:
    """An expression in the mods' names (score, q_idx, kv_idx), for error messages."""
    names = dict(zip(INDICES, ARG_NAMES))
    return str(e.replace(lambda x: Expr(Op.INDEX, (), names[x.arg]) if x.op is Op.INDEX
                         else Expr(Op.INDEX, (), "score") if x == SCORE else None))


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flat(x):
    if isinstance(x, (tuple, list)):
        for y in x:
            yield from _flat(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flat(y)
    else:
        yield x


def _constant(t: torch.Tensor) -> Expr:
    if t.dtype == torch.bool:
        return TRUE if bool(t) else FALSE
    return Expr.const(float(t))


def _is_bool(e: Expr) -> bool:
    return e.op in COMPARE or e.op in LOGIC


def _num(e: Expr) -> Expr:
    """A boolean used as a number (``mask * score``, ``mask.float()``): 1 or 0."""
    return Expr(Op.WHERE, (e, Expr.const(1.0), Expr.const(0.0))) if _is_bool(e) else e


def _bool(e: Expr) -> Expr:
    return e if _is_bool(e) else Expr(Op.NE, (e, Expr.const(0.0)))


def _floor(x: Expr) -> Expr:
    return Expr(Op.FLOORDIV, (x, Expr.const(1.0)))


def _trunc(x: Expr) -> Expr:
    return Expr(Op.MUL, (Expr(Op.SIGN, (x,)), _floor(Expr(Op.ABS, (x,)))))


def _convert(e: Expr, dtype: torch.dtype) -> Expr:
    """``x.to(dtype)``: to bool is ``x != 0``; to an integer type truncates (exact on integers);
    to a float type keeps the value (einattn computes in the kernel's float type)."""
    if dtype == torch.bool:
        return _bool(e)
    return _num(e) if dtype.is_floating_point else _trunc(_num(e))


# -- the cascade -------------------------------------------------------------------------

def _read(t: str, *subs) -> Expr:
    return Expr.read(t, tuple(s if isinstance(s, Sub) else Sub(s) for s in subs))


def build_cascade(score: Expr | None, mask: Expr | None, captured=(), *, gqa: bool = False,
                  lse: bool = False) -> Cascade:
    """The zoo-shaped cascade around a score_mod expression (over ``S[b,h,m,n]``) and a mask
    expression; None for either means none. With ``gqa`` K and V have ``g`` heads, read at
    ``h // r`` with ``r = h // g`` (examples/gqa.yaml); ``lse`` adds ``lse = M + log(L)``.
    Without mods it is the zoo's softmax, with ``kv_idx <= q_idx`` its causal (same hash)."""
    kh = Sub("h", "r") if gqa else Sub("h")
    kv = "g" if gqa else "h"
    inputs = [TensorDecl("Q", ("b", "h", "m", "d")), TensorDecl("K", ("b", kv, "n", "d")),
              TensorDecl("V", ("b", kv, "n", "e")), *(TensorDecl(c.name, c.subs) for c in captured)]
    params = [ParamDecl("scale", Expr(Op.DIV, (Expr.const(1.0), Expr(Op.SQRT, (Expr(Op.INDEX, (), "d"),)))))]
    if gqa:
        params.append(ParamDecl("r", Expr(Op.FLOORDIV, (Expr(Op.INDEX, (), "h"), Expr(Op.INDEX, (), "g")))))
    row, full = ("b", "h", "m"), INDICES
    qk = Expr(Op.MUL, (_read("Q", "b", "h", "m", "d"), _read("K", "b", kh, "n", "d")))
    stmts = [Stmt("S", full, Reduce.SUM, Expr(Op.MUL, (qk, Expr(Op.PARAM, (), "scale"))))]
    x = "S"
    if mask is not None:
        x = "Sm"
        masked = Expr(Op.WHERE, (mask, score or SCORE, Expr.const(float("-inf"))))
        stmts.append(Stmt(x, full, Reduce.SUM, masked))
    elif score is not None:
        x = "T"
        stmts.append(Stmt(x, full, Reduce.SUM, score))
    pv = Expr(Op.MUL, (_read("P", *full), _read("V", "b", kh, "n", "e")))
    stmts += [Stmt("M", row, Reduce.MAX, _read(x, *full)),
              Stmt("P", full, Reduce.SUM, Expr(Op.EXP, (Expr(Op.SUB, (_read(x, *full), _read("M", *row))),))),
              Stmt("L", row, Reduce.SUM, _read("P", *full)),
              Stmt("O", ("b", "h", "m", "e"), Reduce.SUM, Expr(Op.DIV, (pv, _read("L", *row))))]
    if lse:
        stmts.append(Stmt("lse", row, Reduce.SUM,
                          Expr(Op.ADD, (_read("M", *row), Expr(Op.LOG, (_read("L", *row),))))))
    outputs = ("O", "lse") if lse else ("O",)
    return verify(Cascade(tuple(inputs), tuple(params), tuple(stmts), outputs, name="flex", file="<flex>"))


# -- traces, reused while the mods' fingerprint holds -----------------------------------------
# A trace depends on the mods' code and on every value they read: closure cells, globals,
# defaults, the helpers they call. Plain values enter the fingerprint by value; tensors by
# layout (shape, strides, dtype, device, which of them alias), 0-d ones also by value (they
# become constants). A captured tensor's values are a call input, so a new tensor of the same
# layout (the next batch's document ids) reuses the trace: the trace finds it at the same place.
# A mod that reads anything else (a list, an object's attribute, an nn.Module, a module outside
# torch/math) is traced on every call, as is one that computes a constant from a captured
# tensor's values (``(slopes * 2)[h]``): always correct, about 6 ms per mod.

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
    conv = _Converter(tensors)
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


# -- the call -----------------------------------------------------------------------------

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


__all__ = ["flex_attention", "trace_cascade", "trace_mod", "build_cascade", "compiled_kernel",
           "clear_caches", "mod_key", "FlexCascade", "Captured"]
