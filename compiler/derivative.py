"""Symbolic derivatives of expressions: one rule per operator of the whitelist.

``derivative(e, wrt)`` is d e / d wrt, where ``wrt`` is one read node (``S[b,h,m,n]``):
every occurrence of that exact read counts, other reads are constants. Conventions at
the points where a function has no derivative are PyTorch's (``relu'(0) = 0``,
``abs'(0) = sign(0) = 0``, ``max(a, a)`` gives half to each side); comparisons,
``sign`` and ``//`` have derivative 0.

The masked-row rule of the forward (``0 / 0 = 0``: a row with no visible key outputs 0)
has a backward counterpart: a quotient's derivative is 0 where its denominator is 0
(``1 / b`` is read as 0 at ``b = 0``), and so is ``log``'s. A fully masked row thus
gets zero gradients, never NaN.
"""
from __future__ import annotations

import math

from einattn.ir import Expr, Op, UnsupportedError

ZERO, ONE = Expr.const(0.0), Expr.const(1.0)


def _is(e: Expr, v: float) -> bool:
    return e.op is Op.CONST and e.arg == v


def add(a: Expr, b: Expr) -> Expr:
    if a.op is Op.CONST and b.op is Op.CONST:
        return Expr.const(a.arg + b.arg)
    if _is(a, 0.0):
        return b
    if _is(b, 0.0):
        return a
    return Expr(Op.ADD, (a, b))


def sub(a: Expr, b: Expr) -> Expr:
    if a.op is Op.CONST and b.op is Op.CONST:        # x ** (2 - 1) stays an integer power
        return Expr.const(a.arg - b.arg)
    if _is(b, 0.0):
        return a
    if _is(a, 0.0):
        return neg(b)
    return Expr(Op.SUB, (a, b))


def neg(a: Expr) -> Expr:
    if a.op is Op.CONST:
        return Expr.const(-a.arg)
    return mul(Expr.const(-1.0), a)


def mul(a: Expr, b: Expr) -> Expr:
    if _is(a, 0.0) or _is(b, 0.0):
        return ZERO
    if _is(a, 1.0):
        return b
    if _is(b, 1.0):
        return a
    if a.op is Op.CONST and b.op is Op.CONST:
        return Expr.const(a.arg * b.arg)
    return Expr(Op.MUL, (a, b))


def div(a: Expr, b: Expr) -> Expr:
    if _is(a, 0.0):
        return ZERO
    if _is(b, 1.0):
        return a
    return Expr(Op.DIV, (a, b))


def where(c: Expr, a: Expr, b: Expr) -> Expr:
    if a == b:
        return a
    return Expr(Op.WHERE, (c, a, b))


def safe_div(a: Expr, b: Expr) -> Expr:
    """``a * (1 / b)``, with ``1 / b`` read as 0 where ``b`` is 0 (the backward of the masked-row
    rule). A product, so ``dO * V * (1 / L)`` still plans as a score contraction times a row factor."""
    if _is(a, 0.0):
        return ZERO
    if b.op is Op.CONST:
        return div(a, b) if b.arg != 0.0 else ZERO
    return mul(a, where(Expr(Op.EQ, (b, ZERO)), ZERO, div(ONE, b)))


def fn(op: Op, *src: Expr) -> Expr:
    return Expr(op, tuple(src))


def derivative(e: Expr, wrt: Expr) -> Expr:
    """d e / d wrt (``wrt`` a read node)."""
    if e == wrt:
        return ONE
    if e.op in (Op.CONST, Op.PARAM, Op.INDEX, Op.READ) or wrt not in set(e.walk()):
        return ZERO
    d = [derivative(s, wrt) for s in e.src]
    a = e.src[0]
    b = e.src[1] if len(e.src) > 1 else None
    op = e.op
    if op is Op.ADD:
        return add(d[0], d[1])
    if op is Op.SUB:
        return sub(d[0], d[1])
    if op is Op.NEG:
        return neg(d[0])
    if op is Op.MUL:
        return add(mul(d[0], b), mul(a, d[1]))
    if op is Op.DIV:
        # (a / b)' = a' / b - (a / b) * b' / b
        return sub(safe_div(d[0], b), mul(safe_div(e, b), d[1]))
    if op is Op.POW:
        # a ** b: b * a ** (b - 1) * a' + log(a) * a ** b * b'
        out = mul(mul(b, Expr(Op.POW, (a, sub(b, ONE)))), d[0]) if b.op is not Op.CONST or b.arg != 0.0 else ZERO
        return add(out, mul(mul(fn(Op.LOG, a), e), d[1]))
    if op in (Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE, Op.AND, Op.OR, Op.NOT, Op.SIGN, Op.FLOORDIV):
        return ZERO
    if op is Op.MOD:
        # a - floor(a / b) * b
        return sub(d[0], mul(Expr(Op.FLOORDIV, (a, b)), d[1]))
    if op is Op.WHERE:
        return where(a, d[1], d[2])
    if op in (Op.MAX, Op.MIN):
        win = Op.GT if op is Op.MAX else Op.LT
        lose = Op.LT if op is Op.MAX else Op.GT
        tie = mul(Expr.const(0.5), add(d[0], d[1]))
        return where(fn(win, a, b), d[0], where(fn(lose, a, b), d[1], tie))
    du = d[0]
    if _is(du, 0.0):
        return ZERO
    rule = {
        Op.EXP: lambda: e,
        Op.EXP2: lambda: mul(e, Expr.const(math.log(2.0))),
        Op.LOG: lambda: safe_div(ONE, a),
        Op.LOG2: lambda: safe_div(Expr.const(1.0 / math.log(2.0)), a),
        Op.SQRT: lambda: div(Expr.const(0.5), e),
        Op.RSQRT: lambda: mul(Expr.const(-0.5), div(e, a)),
        Op.TANH: lambda: sub(ONE, mul(e, e)),
        Op.SIGMOID: lambda: mul(e, sub(ONE, e)),
        Op.RELU: lambda: where(fn(Op.GT, a, ZERO), ONE, ZERO),
        Op.SOFTPLUS: lambda: fn(Op.SIGMOID, a),
        Op.ABS: lambda: fn(Op.SIGN, a),
        Op.SQUARE: lambda: mul(Expr.const(2.0), a),
    }.get(op)
    if rule is None:
        raise UnsupportedError(f"no derivative rule for '{op.value}' (in '{e}'): einattn cannot derive the "
                               f"backward of this cascade")
    return mul(du, rule())
