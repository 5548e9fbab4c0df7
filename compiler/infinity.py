"""Infinity analysis: where a value may be -inf or +inf.

Backends use it to emit the masked-row rules (``(-inf) - (-inf) = -inf``,
``0 / 0 = 0``) only where they can matter. Conservative: an input may hold
-inf/+inf (a user's additive mask, an overflowed activation), params are finite,
a max/min reduction may be -inf/+inf (its identity, e.g. a fully masked row).
"""
from __future__ import annotations

import math
from typing import Mapping

from einattn.ir import COMPARE, Cascade, Expr, Op, Reduce

Flags = tuple[bool, bool]   # (may be -inf, may be +inf)


def inf_flags(e: Expr, flags: Mapping[str, Flags]) -> Flags:
    """Whether ``e`` may be -inf / +inf; reads are finite unless ``flags`` says otherwise."""
    op = e.op
    if op is Op.CONST:
        return (e.arg == -math.inf, e.arg == math.inf)
    if op in (Op.PARAM, Op.INDEX):
        return (False, False)
    if op is Op.READ:
        return flags.get(e.arg[0], (False, False))
    if op is Op.RUNNING:
        return inf_flags(e.src[0], flags)
    if op in COMPARE or op in (Op.AND, Op.OR, Op.NOT):
        return (False, False)
    s = [inf_flags(x, flags) for x in e.src]
    if op is Op.ADD:
        return (s[0][0] or s[1][0], s[0][1] or s[1][1])
    if op is Op.SUB:
        return (s[0][0] or s[1][1], s[0][1] or s[1][0])
    if op is Op.NEG:
        return (s[0][1], s[0][0])
    if op is Op.MAX:
        return (s[0][0] and s[1][0], s[0][1] or s[1][1])
    if op is Op.MIN:
        return (s[0][0] or s[1][0], s[0][1] and s[1][1])
    if op is Op.WHERE:
        return (s[1][0] or s[2][0], s[1][1] or s[2][1])
    if op in (Op.EXP, Op.EXP2, Op.RELU, Op.SOFTPLUS, Op.SQRT):
        return (False, s[0][1])
    if op in (Op.SIGMOID, Op.TANH, Op.SIGN):
        return (False, False)
    if op is Op.ABS:
        return (False, s[0][0] or s[0][1])
    if op in (Op.LOG, Op.LOG2):
        return (True, s[0][1])
    anyinf = any(a or b for a, b in s)
    return (anyinf, anyinf)


def input_flags(c: Cascade) -> dict[str, Flags]:
    """Inputs may hold -inf and +inf (an additive mask passed as a tensor, an overflowed activation)."""
    return {t.name: (True, True) for t in c.inputs}


def cascade_inf_flags(c: Cascade) -> dict[str, Flags]:
    """Per input and statement: may its value be -inf / +inf?"""
    flags = input_flags(c)
    for s in c.stmts:
        f = inf_flags(s.expr, flags)
        if s.reduced and s.reduce is Reduce.MAX:
            f = (True, f[1])
        elif s.reduced and s.reduce is Reduce.MIN:
            f = (f[0], True)
        flags[s.name] = f
    return flags
