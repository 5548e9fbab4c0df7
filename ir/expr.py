"""Expressions: one frozen node type, ``Expr(op, src, arg)``.

Leaves: ``CONST`` (arg: float), ``PARAM`` (arg: name), ``INDEX`` (arg: index
name, read as an integer coordinate), ``READ`` (arg: ``(tensor, subscripts)``
where each subscript is a :class:`Sub`). Everything else is an operator over
``src``. Rewrites build new nodes; nothing mutates.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, Iterator


class Op(enum.Enum):
    CONST = "const"
    PARAM = "param"
    INDEX = "index"
    READ = "read"
    # arithmetic
    ADD = "+"
    SUB = "-"
    MUL = "*"
    DIV = "/"
    FLOORDIV = "//"
    MOD = "%"
    POW = "**"
    NEG = "neg"
    # comparisons and logic (boolean results)
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    EQ = "=="
    NE = "!="
    AND = "&"
    OR = "|"
    NOT = "~"
    # functions
    EXP = "exp"
    EXP2 = "exp2"
    LOG = "log"
    LOG2 = "log2"
    SQRT = "sqrt"
    RSQRT = "rsqrt"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"
    SOFTPLUS = "softplus"
    ABS = "abs"
    SIGN = "sign"
    SQUARE = "square"
    MIN = "min"
    MAX = "max"
    WHERE = "where"
    # introduced by the online-rescaling rewrite, never written by users:
    # the running value of a row tensor at the current key tile
    RUNNING = "running"


BINARY = {Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.FLOORDIV, Op.MOD, Op.POW, Op.MIN, Op.MAX}
COMPARE = {Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE}
LOGIC = {Op.AND, Op.OR, Op.NOT}
UNARY_FN = {Op.EXP, Op.EXP2, Op.LOG, Op.LOG2, Op.SQRT, Op.RSQRT, Op.TANH, Op.SIGMOID,
            Op.RELU, Op.SOFTPLUS, Op.ABS, Op.SIGN, Op.SQUARE}
# spec function name -> (op, arity)
FUNCTIONS: dict[str, tuple[Op, int]] = {op.value: (op, 1) for op in UNARY_FN}
FUNCTIONS.update({"min": (Op.MIN, 2), "max": (Op.MAX, 2), "where": (Op.WHERE, 3)})


@dataclass(frozen=True, slots=True)
class Sub:
    """One subscript of a read: an index name, optionally floor-divided by a param
    (``h // r`` reads KV head ``h // r`` for query head ``h``)."""
    index: str
    div: str | None = None

    def __str__(self) -> str:
        return self.index if self.div is None else f"{self.index} // {self.div}"


@dataclass(frozen=True, slots=True)
class Expr:
    op: Op
    src: tuple["Expr", ...] = ()
    arg: object = None

    # -- constructors -------------------------------------------------------
    @staticmethod
    def const(v: float) -> "Expr":
        return Expr(Op.CONST, (), float(v))

    @staticmethod
    def read(tensor: str, subs: tuple[Sub, ...]) -> "Expr":
        return Expr(Op.READ, (), (tensor, tuple(subs)))

    # -- queries ------------------------------------------------------------
    def walk(self) -> Iterator["Expr"]:
        """Pre-order traversal."""
        stack = [self]
        while stack:
            e = stack.pop()
            yield e
            stack.extend(reversed(e.src))

    def indices(self) -> tuple[str, ...]:
        """Index names this expression depends on, in first-seen order."""
        seen: dict[str, None] = {}
        for e in self.walk():
            if e.op is Op.INDEX:
                seen[e.arg] = None
            elif e.op is Op.READ:
                for s in e.arg[1]:
                    seen[s.index] = None
        return tuple(seen)

    def is_scalar(self) -> bool:
        """Depends on params and constants only (the same value at every coordinate)."""
        return not self.indices() and not self.reads()

    def reads(self) -> tuple[str, ...]:
        """Tensor names read, in first-seen order."""
        return tuple(dict.fromkeys(e.arg[0] for e in self.walk() if e.op is Op.READ))

    def params(self) -> tuple[str, ...]:
        names: dict[str, None] = {}
        for e in self.walk():
            if e.op is Op.PARAM:
                names[e.arg] = None
            elif e.op is Op.READ:
                for s in e.arg[1]:
                    if s.div is not None:
                        names[s.div] = None
        return tuple(names)

    def replace(self, fn: Callable[["Expr"], "Expr | None"]) -> "Expr":
        """Bottom-up rewrite: ``fn`` returns a replacement node or None."""
        src = tuple(s.replace(fn) for s in self.src)
        node = self if src == self.src else Expr(self.op, src, self.arg)
        new = fn(node)
        return node if new is None else new

    def to_json(self):
        if self.op is Op.CONST:
            v = self.arg
            if math.isnan(v):
                return {"const": "nan"}
            return {"const": v if math.isfinite(v) else ("inf" if v > 0 else "-inf")}
        if self.op in (Op.PARAM, Op.INDEX):
            return {self.op.value: self.arg}
        if self.op is Op.READ:
            t, subs = self.arg
            return {"read": t, "subs": [[s.index, s.div] for s in subs]}
        return {"op": self.op.value, "src": [s.to_json() for s in self.src]}

    def __str__(self) -> str:
        return render(self)


# Python's precedence: comparisons bind looser than | and &, which bind looser than + -
_PREC = {**{o: 1 for o in COMPARE}, Op.OR: 2, Op.AND: 3, Op.ADD: 4, Op.SUB: 4,
         Op.MUL: 5, Op.DIV: 5, Op.FLOORDIV: 5, Op.MOD: 5, Op.NEG: 6, Op.NOT: 6, Op.POW: 7}


def render(e: Expr, parent: int = 0) -> str:
    """Spec syntax for an expression (parsing it back gives the same node)."""
    if e.op is Op.CONST:
        v = e.arg
        if math.isinf(v):
            s = "inf" if v > 0 else "-inf"
            return f"({s})" if v < 0 and parent else s
        s = repr(v)
        return f"({s})" if v < 0 and parent else s
    if e.op in (Op.PARAM, Op.INDEX):
        return e.arg
    if e.op is Op.READ:
        t, subs = e.arg
        return f"{t}[{', '.join(map(str, subs))}]"
    if e.op in (Op.NEG, Op.NOT):
        p = _PREC[e.op]
        s = ("-" if e.op is Op.NEG else "~") + render(e.src[0], p)
        return f"({s})" if p <= parent else s
    if e.op in _PREC:
        p = _PREC[e.op]
        lhs = render(e.src[0], p if e.op is not Op.POW else p + 1)
        rhs = render(e.src[1], p + 1 if e.op is not Op.POW else p)
        s = f"{lhs} {e.op.value} {rhs}"
        return f"({s})" if p < parent or (p == parent and p == 1) else s
    return f"{e.op.value}({', '.join(render(s) for s in e.src)})"


def product_factors(e: Expr) -> tuple[list[Expr], list[Expr]]:
    """Split a top-level product into (numerator factors, denominator factors).

    ``a * b / c`` -> ([a, b], [c]). A node that is not ``*`` or ``/`` is one factor.
    """
    if e.op is Op.MUL:
        n1, d1 = product_factors(e.src[0])
        n2, d2 = product_factors(e.src[1])
        return n1 + n2, d1 + d2
    if e.op is Op.DIV:
        n1, d1 = product_factors(e.src[0])
        n2, d2 = product_factors(e.src[1])
        return n1 + d2, d1 + n2
    return [e], []


def build_product(num: list[Expr], den: list[Expr]) -> Expr:
    """Inverse of :func:`product_factors`."""
    out = num[0] if num else Expr.const(1.0)
    for f in num[1:]:
        out = Expr(Op.MUL, (out, f))
    for f in den:
        out = Expr(Op.DIV, (out, f))
    return out
