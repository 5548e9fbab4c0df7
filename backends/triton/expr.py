"""The one hook through which user expressions enter a Triton kernel: Expr -> Triton source.

A :class:`Printer` knows where every name lives in the kernel being rendered
(grid coordinates, query/key/value offsets, row state, tile values, params,
input pointers and strides) and prints an expression for one of three
contexts: ``tile`` ([BLOCK_M, BLOCK_N]), ``row`` ([BLOCK_M]) and ``rowval``
([BLOCK_M, BLOCK_<value>]). 1-D row values are expanded with ``[:, None]`` in
the 2-D contexts, so every printed expression broadcasts to its context.

The masked-row rules of the reference (``(-inf) - (-inf) = -inf``, ``0 / 0 = 0``)
cost a compare and a select per element, so they are printed only where an
operand can actually be -inf (maxima, masked scores) or a denominator can be 0
(anything but a param or a non-zero constant): the plain softmax inner loop has
neither.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from einattn.compiler.infinity import Flags, cascade_inf_flags, inf_flags
from einattn.ir import Cascade, Expr, Op, UnsupportedError

NEG_INF = 'float("-inf")'

_UNARY = {Op.EXP: "tl.exp({})", Op.EXP2: "tl.exp2({})", Op.LOG: "tl.log({})", Op.LOG2: "tl.log2({})",
          Op.SQRT: "tl.sqrt({})", Op.RSQRT: "tl.rsqrt({})", Op.TANH: "_tanh({})",
          Op.SIGMOID: "tl.sigmoid({})", Op.RELU: "_max_nan({}, 0.0)", Op.SOFTPLUS: "_softplus({})",
          Op.ABS: "tl.abs({})", Op.SIGN: "_sign({})", Op.SQUARE: "_square({})", Op.NEG: "(-{})",
          Op.NOT: "({} == 0)"}
_INFIX = {Op.ADD: "+", Op.MUL: "*", Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">=", Op.EQ: "==",
          Op.NE: "!=", Op.AND: "&", Op.OR: "|"}
_CALL2 = {Op.MIN: "_min_nan", Op.MAX: "_max_nan", Op.POW: "_pow"}     # min/max: NaN propagates
_FOLD = {Op.EXP: math.exp, Op.EXP2: lambda x: 2.0 ** x, Op.LOG: math.log, Op.LOG2: math.log2,
         Op.SQRT: math.sqrt, Op.TANH: math.tanh, Op.ABS: abs, Op.NEG: lambda x: -x,
         Op.SQUARE: lambda x: x * x, Op.RELU: lambda x: max(x, 0.0)}


def const_text(v: float) -> str:
    if math.isinf(v):
        return 'float("inf")' if v > 0 else NEG_INF
    if math.isnan(v):
        return 'float("nan")'
    return repr(float(v))


def may_be_neg_inf(c: Cascade) -> dict[str, Flags]:
    """Per statement: (may be -inf, may be +inf); max reductions start at -inf, masks put it there."""
    return cascade_inf_flags(c)


def _neg_inf(e: Expr, flags: dict[str, Flags]) -> bool:
    return inf_flags(e, flags)[0]


def is_scalar(e: Expr) -> bool:
    """Depends on params and constants only."""
    return not any(x.op in (Op.READ, Op.INDEX, Op.RUNNING) for x in e.walk())


@dataclass
class Printer:
    """Prints expressions of one kernel plan.

    Attributes:
        cascade: the rewritten cascade (declarations of inputs and statements).
        roles: index name -> ``grid`` / ``query`` / ``key`` / ``contract`` / ``value``.
        tiles: names of the tile statements visible now (variables ``t_<name>``).
        rows: names of row statements (variables ``r_<name>``; [m] or [m, value]).
        hoist: when set, loads of inputs without the key index are hoisted out of
            the key loop: ``name -> code`` collected here, the expression uses ``name``.
        key_mask: print the key-bound mask on loads that carry the key index.
    """
    cascade: Cascade
    roles: dict[str, str]
    tiles: set[str] = field(default_factory=set)
    rows: set[str] = field(default_factory=set)
    hoist: dict[str, str] | None = None
    key_mask: bool = True

    def __post_init__(self):
        self.neg_inf = may_be_neg_inf(self.cascade)

    # -- coordinates ------------------------------------------------------------
    def coord(self, index: str, ctx: str, div: str | None = None, load_axis: str | None = None) -> str:
        role = self.roles.get(index)
        if role is None:
            raise UnsupportedError(f"index '{index}' has no role in the tile program (expected one of "
                                   f"{sorted(self.roles)})")
        if role == "grid":
            return f"idx_{index}" if div is None else f"(idx_{index} // p_{div})"
        if div is not None:
            raise UnsupportedError(f"'{index} // {div}': only grid indices (batch, heads) may be divided")
        if role == "query":
            return "offs_m" if ctx == "row" else "offs_m[:, None]"
        if role == "key":
            if ctx != "tile" and load_axis is None:
                raise UnsupportedError(f"the key index '{index}' appears outside a key tile")
            return "offs_n[None, :]" if load_axis != "rows" else "offs_n[:, None]"
        if role == "value":
            if ctx != "rowval" and load_axis is None:
                raise UnsupportedError(f"the value index '{index}' appears in a {ctx} expression")
            return f"offs_{index}[None, :]"
        if load_axis == "cols":
            return f"offs_{index}[None, :]"
        if load_axis == "rows":
            return f"offs_{index}[:, None]"
        raise UnsupportedError(f"the contraction index '{index}' may appear only in a score contraction")

    def mask_of(self, index: str, ctx: str, load_axis: str | None = None) -> str | None:
        role = self.roles[index]
        if role == "grid":
            return None
        if role == "query":
            return "mask_m" if ctx == "row" else "mask_m[:, None]"
        if role == "key":
            if not self.key_mask:
                return None
            return "mask_n[:, None]" if load_axis == "rows" else "mask_n[None, :]"
        if load_axis == "rows":
            return f"mask_{index}[:, None]"
        return f"mask_{index}[None, :]"

    def load(self, read: Expr, ctx: str, load_axis: dict[str, str] | None = None, cast: bool = True) -> str:
        """``tl.load`` of an input read; ``load_axis`` places indices of score/value tiles."""
        name, subs = read.arg
        decl = self.cascade.input(name)
        offs, masks = [f"{name}_ptr"], []
        for j, s in enumerate(subs):
            ax = (load_axis or {}).get(s.index)
            offs.append(f"{self.coord(s.index, ctx, s.div, ax)} * stride_{name}_{j}")
            m = self.mask_of(s.index, ctx, ax)
            if m is not None:
                masks.append(m)
        assert len(subs) == len(decl.indices)
        ptr = " + ".join(offs)
        code = f"tl.load({ptr}, mask={' & '.join(masks)}, other=0.0)" if masks else f"tl.load({ptr})"
        return f"{code}.to(tl.float32)" if cast else code

    # -- expressions ------------------------------------------------------------
    def __call__(self, e: Expr, ctx: str) -> str:
        return self.p(e, ctx)

    def p(self, e: Expr, ctx: str) -> str:
        op = e.op
        if op is Op.CONST:
            return const_text(e.arg)
        if op is Op.PARAM:
            return f"p_{e.arg}"
        if op is Op.INDEX:
            return self.coord(e.arg, ctx)
        if op is Op.RUNNING:
            return self.p(e.src[0], ctx)
        if op is Op.READ:
            return self.read(e, ctx)
        if op in _FOLD and e.src[0].op is Op.CONST:
            return const_text(_FOLD[op](e.src[0].arg))
        if op is Op.SUB:
            a, b = self.p(e.src[0], ctx), self.p(e.src[1], ctx)
            if self._neg_inf(e.src[0]) and self._neg_inf(e.src[1]):
                return f"_sub_rule({a}, {b})"
            return f"({a} - {b})"
        if op is Op.DIV:
            a, b = self.p(e.src[0], ctx), self.p(e.src[1], ctx)
            den = e.src[1]
            if is_scalar(den) and not (den.op is Op.CONST and den.arg == 0.0):
                return f"({a} / {b})"
            return f"_div_rule({a}, {b})"
        if op is Op.FLOORDIV:
            return f"tl.floor({self.p(e.src[0], ctx)} / {self.p(e.src[1], ctx)})"
        if op is Op.MOD:
            a, b = self.p(e.src[0], ctx), self.p(e.src[1], ctx)
            return f"({a} - {b} * tl.floor({a} / {b}))"
        if op is Op.POW and e.src[1].op is Op.CONST and float(e.src[1].arg).is_integer() and 1 <= e.src[1].arg <= 4:
            a = self.p(e.src[0], ctx)
            return "(" + " * ".join([a] * int(e.src[1].arg)) + ")"
        if op in _INFIX:
            return f"({self.p(e.src[0], ctx)} {_INFIX[op]} {self.p(e.src[1], ctx)})"
        if op in _CALL2:
            return f"{_CALL2[op]}({self.p(e.src[0], ctx)}, {self.p(e.src[1], ctx)})"
        if op in _UNARY:
            return _UNARY[op].format(self.p(e.src[0], ctx))
        if op is Op.WHERE:
            return f"tl.where({', '.join(self.p(s, ctx) for s in e.src)})"
        raise UnsupportedError(f"the Triton backend cannot print '{op.value}' in '{e}'")

    def _neg_inf(self, e: Expr) -> bool:
        return _neg_inf(e, self.neg_inf)

    def read(self, e: Expr, ctx: str) -> str:
        name, subs = e.arg
        if self.cascade.input(name) is not None:
            has_key = any(self.roles.get(s.index) == "key" for s in subs)
            if self.hoist is not None and not has_key:
                code = self.load(e, "row" if ctx == "tile" else ctx)
                var = self.hoist.setdefault(code, f"ld_{name}_{len(self.hoist)}")
                if ctx == "tile" and any(self.roles.get(s.index) == "query" for s in subs):
                    return f"{var}[:, None]"
                return var
            return self.load(e, ctx)
        if name in self.tiles:
            return f"t_{name}"
        if name in self.rows:
            dims = self.cascade.stmt(name).indices
            expand = ctx != "row" and any(self.roles.get(i) == "query" for i in dims) and \
                not any(self.roles.get(i) == "value" for i in dims)
            return f"r_{name}[:, None]" if expand else f"r_{name}"
        raise UnsupportedError(f"'{name}' is read where it is not available in the Triton kernel "
                               f"(tile values live in one pass only)")
