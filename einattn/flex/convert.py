"""The mods' graphs as einattn ``Expr``: ``trace_mod`` traces a mod as FlexAttention does, and
``Converter`` turns each node of the traced graph into one ``Expr`` (the score a read of
``S[b,h,m,n]``, the indices ``b, h, m, n``), recording the tensors the mods captured as
``Captured`` inputs of the cascade."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from einattn.ir import COMPARE, LOGIC, Expr, Op, SpecError, Sub, UnsupportedError

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
        return t.to(dtype)          # differentiable: a learned bias or slope gets its gradient

    def rebind(self, tensors: list) -> "Captured":
        if self.source is None:
            return self
        i, selects = self.source
        t = tensors[i]
        for dim, at in selects:
            t = t.select(dim, at)
        return Captured(self.name, t, self.subs, self.source)


@dataclass(frozen=True)
class _Partial:
    """A captured tensor read at fewer indices than it has dims (``t[h]`` of a [H, S] tensor)."""
    tensor: torch.Tensor
    subs: tuple[str, ...]


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


class Converter:
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
