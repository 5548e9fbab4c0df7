"""The expression printer every backend builds on: the rules the targets share, written once.

User expressions (:mod:`einattn.ir.expr`) reach a kernel only through its
backend's printer (``backends/cpu/expr.py``: TVMScript, ``backends/triton/expr.py``:
Triton). What every target must compute alike lives here, so it cannot drift
between copies: the dispatch over :class:`~einattn.ir.Op`, the leaves, the
masked-row rules of the reference (``backends/torch/evaluator.py``) and where they
apply, infinities and NaN, ``where``, ``min``/``max`` that keep a NaN, comparisons,
logic, small integer powers, ``%`` and ``//``.

A target subclasses :class:`ExprPrinter` with its spellings as class attributes
(``OPS``: whole operators; ``PRIMS``: the primitives the shared rules are built
from; the constant texts) and overrides only what differs: the leaves, ``reuse``
(a value printed twice: the CPU stages it) and the one-call helpers a template
may have for a rule.

The masked-row rules cost a compare and a select per element, so they are printed
only where they can matter:

- ``(-inf) - (-inf) = -inf`` where both operands may be -inf
  (:func:`needs_sub_rule`, from :mod:`einattn.compiler.infinity`);
- ``0 / 0 = 0`` unless the divisor is provably non-zero (:func:`needs_div_rule`):
  a scalar (params and constants) that is not a literal 0. A literal ``0.0`` gets
  the rule, since the reference's ``0 / 0`` is 0 there too (``div_by_zero``: a
  target may spell it without a division; TVM refuses a literal ``x / 0``).

``//`` and ``%`` follow the reference's ``torch`` floor division and remainder,
which have no masked-row rule: ``0 // 0`` is NaN on every target.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

from einattn.compiler.infinity import Flags, inf_flags
from einattn.ir import COMPARE, Expr, Op, UnsupportedError

# x ** k for these k is printed as a product of k factors: exact for any sign of x,
# where the general power (exp2(k * log2(x)) on Triton) needs x > 0
SMALL_POWERS = (1.0, 2.0, 3.0, 4.0)

# a function of a literal, folded where a target asks for it (FOLD_CONSTANTS)
FOLD: dict[Op, Callable[[float], float]] = {
    Op.EXP: math.exp, Op.EXP2: lambda x: 2.0 ** x, Op.LOG: math.log, Op.LOG2: math.log2,
    Op.SQRT: math.sqrt, Op.TANH: math.tanh, Op.ABS: abs, Op.NEG: lambda x: -x,
    Op.SQUARE: lambda x: x * x, Op.RELU: lambda x: max(x, 0.0)}


def needs_sub_rule(e: Expr, flags: Mapping[str, Flags]) -> bool:
    """``e = a - b`` needs ``(-inf) - (-inf) = -inf``: both sides may be -inf."""
    return inf_flags(e.src[0], flags)[0] and inf_flags(e.src[1], flags)[0]


def needs_div_rule(den: Expr) -> bool:
    """A division by ``den`` needs ``0 / 0 = 0``: ``den`` is not provably non-zero."""
    return not den.is_scalar() or (den.op is Op.CONST and den.arg == 0.0)


def fold(e: Expr) -> float | None:
    """The value of a function of a literal, or None (not foldable, or a math domain error:
    then the kernel computes it, with IEEE results such as ``log(0) = -inf``)."""
    if e.op not in FOLD or e.src[0].op is not Op.CONST:
        return None
    try:
        return float(FOLD[e.op](e.src[0].arg))
    except (ValueError, OverflowError):
        return None


class ExprPrinter:
    """Prints an :class:`Expr` as source text; subclasses give spellings and leaves.

    ``at`` is where the expression is printed, opaque here and handed to the leaf
    hooks: the CPU's ``Ctx``, Triton's ``"tile"``/``"row"``/``"rowval"``.

    Class attributes (a target's spellings):
        TARGET: the backend's name, for error messages.
        NUMBER, INF, NEG_INF, NAN: constant texts (NUMBER formats a finite float).
        OPS: ``Op -> format`` with one ``{}`` per operand; an operator spelled here is
            printed so (after the shared rules of SUB, DIV, FLOORDIV, MOD, POW, MIN,
            MAX, RELU); SQUARE, SIGN and RSQRT left out are built from primitives.
        PRIMS: ``floor``, and for the generic NaN-keeping min/max ``isnan``, ``min``, ``max``.
        FOLD_CONSTANTS: fold a function of a literal into a literal.
    """
    TARGET = "?"
    NUMBER = "{!r}"
    INF = 'float("inf")'
    NEG_INF = 'float("-inf")'
    NAN = 'float("nan")'
    OPS: Mapping[Op, str] = {Op.ADD: "({} + {})", Op.MUL: "({} * {})",
                             **{o: f"({{}} {o.value} {{}})" for o in COMPARE}}
    PRIMS: Mapping[str, str] = {}
    FOLD_CONSTANTS = False

    @classmethod
    def const(cls, v: float) -> str:
        if math.isnan(v):
            return cls.NAN
        if math.isinf(v):
            return cls.INF if v > 0 else cls.NEG_INF
        return cls.NUMBER.format(float(v))

    # -- target hooks -----------------------------------------------------------
    def index(self, name: str, at) -> str:
        """The coordinate of index ``name``."""
        raise NotImplementedError

    def read(self, e: Expr, at) -> str:
        """A read of a tensor (input, tile or row value)."""
        raise NotImplementedError

    def flags(self, at) -> Mapping[str, Flags]:
        """Which named values may be -inf / +inf here."""
        raise NotImplementedError

    def reuse(self, text: str) -> str:
        """``text`` about to be printed more than once; a target may bind it first."""
        return text

    # -- dispatch -----------------------------------------------------------------
    def expr(self, e: Expr, at) -> str:
        op = e.op
        if op is Op.CONST:
            return self.const(e.arg)
        if op is Op.PARAM:
            return f"p_{e.arg}"
        if op is Op.INDEX:
            return self.index(e.arg, at)
        if op is Op.READ:
            return self.read(e, at)
        if op is Op.RUNNING:       # the row value as it stands at this key tile: the same variable
            return self.expr(e.src[0], at)
        if self.FOLD_CONSTANTS and (v := fold(e)) is not None:
            return self.const(v)
        if op is Op.SUB:
            return self.sub(e, at)
        if op is Op.DIV:
            a, b, den = self.expr(e.src[0], at), self.expr(e.src[1], at), e.src[1]
            if not needs_div_rule(den):
                return self.scalar_div(a, b)
            if den.op is Op.CONST:     # a literal 0.0 or -0.0 (any other literal is a non-zero scalar)
                return self.div_by_zero(a, b, den.arg)
            return self.div_rule(a, b)
        if op is Op.FLOORDIV:
            a = self.reuse(self.expr(e.src[0], at))
            b = self.reuse(self.expr(e.src[1], at))
            return self.floor_div(a, b, e.src[0], e.src[1])
        if op is Op.MOD:           # torch.remainder: the divisor's sign
            a = self.reuse(self.expr(e.src[0], at))
            b = self.reuse(self.expr(e.src[1], at))
            return self.remainder(a, b, e.src[0], e.src[1])
        if op is Op.POW and e.src[1].op is Op.CONST and e.src[1].arg in SMALL_POWERS:
            x = self.reuse(self.expr(e.src[0], at))
            return "(" + " * ".join([x] * int(e.src[1].arg)) + ")"
        return self.apply(op, [self.expr(s, at) for s in e.src], e, at)

    def apply(self, op: Op, args: list[str], e: Expr, at) -> str:
        """``op`` of printed operands: a shared rule, the target's spelling, or a construction."""
        if op in (Op.MIN, Op.MAX):
            return self.min_max(op, *args)
        if op is Op.RELU:
            return self.min_max(Op.MAX, args[0], self.const(0.0))
        if op in self.OPS:
            return self.OPS[op].format(*args)
        zero, one = self.const(0.0), self.const(1.0)
        if op is Op.SQUARE:
            x = self.reuse(args[0])
            return f"({x} * {x})"
        if op is Op.SIGN:
            x = self.reuse(args[0])
            return self.where(f"{x} > {zero}", one, self.where(f"{x} < {zero}", self.const(-1.0), zero))
        if op is Op.RSQRT and Op.SQRT in self.OPS:
            return f"({one} / {self.OPS[Op.SQRT].format(args[0])})"
        raise UnsupportedError(f"the {self.TARGET} backend cannot print '{op.value}' (in '{e}'); "
                               f"rewrite the expression without it")

    # -- shared rules (a target may spell one as a call to a helper of its template) ---------
    def where(self, cond: str, a: str, b: str) -> str:
        return self.OPS[Op.WHERE].format(cond, a, b)

    def sub(self, e: Expr, at) -> str:
        a, b = self.expr(e.src[0], at), self.expr(e.src[1], at)
        return self.sub_rule(a, b) if needs_sub_rule(e, self.flags(at)) else f"({a} - {b})"

    def sub_rule(self, a: str, b: str) -> str:
        """``a - b`` with ``(-inf) - (-inf) = -inf`` (and ``(-inf) - finite = -inf`` as IEEE)."""
        a = self.reuse(a)
        return self.where(f"{a} == {self.NEG_INF}", self.NEG_INF, f"{a} - {b}")

    def div_rule(self, a: str, b: str) -> str:
        """``a / b`` with ``0 / 0 = 0`` (a fully masked row outputs 0)."""
        a, b = self.reuse(a), self.reuse(b)
        zero = self.const(0.0)
        both = self.OPS[Op.AND].format(f"{a} == {zero}", f"{b} == {zero}")
        return self.where(both, zero, f"{a} / {b}")

    def quotient(self, a: str, b: str, den: Expr) -> str:
        """``a / b`` under IEEE rules alone (inside ``//`` and ``%``), unparenthesised."""
        return f"{a} / {b}"

    def floor_div(self, a: str, b: str, num: Expr, den: Expr) -> str:
        """``a // b`` as torch (and Python) floor-divide: ``floor(a / b)``, except that an infinite
        ``a`` gives NaN (``b != 0``) and a finite non-zero ``a`` over an infinite ``b`` of the other
        sign gives -1. (For finite operands torch floors ``(a - fmod(a, b)) / b``, which can be one
        less where ``a / b`` rounds up to an integer, as ``1 // 0.1``: 9 in torch, 10 here.)"""
        q = self.PRIMS["floor"].format(self.quotient(a, b, den))
        nan = self._all(self._test(num, a, "inf"), self._test(den, b, "nonzero"))
        minus_one = self._all(self._test(den, b, "inf"), self._test(num, a, "finite"),
                              self._opposite(num, den, a, b, "<"))
        out = self._pick(minus_one, self.const(-1.0), q)
        return self._pick(nan, self.NAN, out)

    def remainder(self, a: str, b: str, num: Expr, den: Expr) -> str:
        """``a % b`` as torch.remainder, with the divisor's sign (``a`` and ``b`` may be printed
        twice): ``a - b * floor(a / b)``, and for an infinite ``b`` and finite ``a`` (where that
        is NaN) ``a`` if both have one sign or ``a`` is 0, else ``b``."""
        r = f"({a} - {b} * {self.PRIMS['floor'].format(self.quotient(a, b, den))})"
        special = self._all(self._test(den, b, "inf"), self._test(num, a, "finite"))
        keep_a = self._any(self._test(num, a, "zero"), self._opposite(num, den, a, b, ">"))
        return self._pick(special, self._pick(keep_a, a, b), r)

    # conditions on operands, decided here when an operand is a literal (Triton cannot combine
    # a Python bool with a tensor): True, False, or the printed test
    def _test(self, e: Expr, x: str, what: str):
        if e.op is Op.CONST:
            v = e.arg
            return {"inf": math.isinf(v), "finite": math.isfinite(v), "nonzero": v != 0.0, "zero": v == 0.0}[what]
        if self._nonneg(e) and what in ("inf", "finite"):       # a coordinate or a positive integer param
            return what == "finite"
        if e.op is Op.PARAM and self._nonneg(e) and what in ("nonzero", "zero"):
            return what == "nonzero"
        absx = self.OPS[Op.ABS].format(x)
        return {"inf": f"({absx} == {self.INF})", "finite": f"({absx} < {self.INF})",
                "nonzero": f"({x} != {self.const(0.0)})", "zero": f"({x} == {self.const(0.0)})"}[what]

    def _nonneg(self, e: Expr) -> bool:
        """A coordinate (an integer >= 0), or a param the launch checks is a positive integer (a
        ``//`` subscript's divisor: ``positive``)."""
        return e.op is Op.INDEX or (e.op is Op.PARAM and e.arg in getattr(self, "positive", ()))

    def _opposite(self, num: Expr, den: Expr, a: str, b: str, cmp: str):
        """``a * b < 0`` (``cmp`` "<") or ``> 0``: the operands' signs differ or agree."""
        if num.op is Op.CONST and den.op is Op.CONST:
            p = num.arg * den.arg
            return p < 0 if cmp == "<" else p > 0
        if cmp == "<" and self._nonneg(num) and self._nonneg(den):
            return False
        return f"({self.OPS[Op.MUL].format(a, b)} {cmp} {self.const(0.0)})"

    def _pick(self, cond, a: str, b: str) -> str:
        return a if cond is True else b if cond is False else self.where(cond, a, b)

    def _all(self, *terms):
        return self._join(Op.AND, False, terms)

    def _any(self, *terms):
        return self._join(Op.OR, True, terms)

    def _join(self, op: Op, absorbing: bool, terms):
        """``op`` (AND / OR) of conditions that may be decided (True / False) or printed: the
        ``absorbing`` value decides the whole, the other one drops out."""
        if any(t is absorbing for t in terms):
            return absorbing
        rest = [t for t in terms if t is not (not absorbing)]
        if not rest:
            return not absorbing
        out = rest[0]
        for t in rest[1:]:
            out = self.OPS[op].format(out, t)
        return out

    def div_by_zero(self, a: str, b: str, zero: float) -> str:
        """``a / 0.0`` or ``a / -0.0`` (a literal divisor), with ``0 / 0 = 0``."""
        return self.div_rule(a, b)

    def scalar_div(self, a: str, b: str) -> str:
        """``a / b`` by a provably non-zero scalar."""
        return f"({a} / {b})"

    def min_max(self, op: Op, a: str, b: str) -> str:
        """NaN-propagating min/max (torch.minimum/maximum, the reference's rule)."""
        a = self.reuse(a)
        fn = self.PRIMS["min" if op is Op.MIN else "max"]
        return self.where(self.PRIMS["isnan"].format(a), a, fn.format(a, b))
