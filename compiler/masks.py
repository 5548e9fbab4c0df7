"""Mask facts: predicates affine in (query, key) and what a fully masked tile contributes.

A predicate built from comparisons of affine expressions in the query and key
indices (``n <= m``, ``n > m - W``, ``n <= m + off``, ``n < P``) joined by
``& | ~`` is decided per (query tile, key tile) from the tile's corners: EMPTY
(false everywhere: the key tile is skipped when the pass's reductions then get
only their identity), FULL (true everywhere: the predicate is not evaluated) or
PARTIAL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from einattn.ir import COMPARE, Expr, Op, Reduce, Stmt

LINEAR_OPS = COMPARE


@dataclass(frozen=True, slots=True)
class Affine:
    """``cm * m + cn * n + const``; ``const`` an Expr over params and numbers."""
    cm: float
    cn: float
    const: Expr


def affine(e: Expr, query: str, key: str) -> Affine | None:
    """Affine form of ``e`` in (query, key), or None."""
    zero = Expr.const(0.0)
    if e.op is Op.CONST or e.op is Op.PARAM:
        return Affine(0.0, 0.0, e)
    if e.op is Op.INDEX:
        if e.arg == query:
            return Affine(1.0, 0.0, zero)
        if e.arg == key:
            return Affine(0.0, 1.0, zero)
        return None
    if e.op in (Op.ADD, Op.SUB):
        a, b = affine(e.src[0], query, key), affine(e.src[1], query, key)
        if a is None or b is None:
            return None
        s = 1.0 if e.op is Op.ADD else -1.0
        return Affine(a.cm + s * b.cm, a.cn + s * b.cn, Expr(e.op, (a.const, b.const)))
    if e.op is Op.NEG:
        a = affine(e.src[0], query, key)
        return None if a is None else Affine(-a.cm, -a.cn, Expr(Op.NEG, (a.const,)))
    if e.op is Op.MUL:
        for x, y in ((e.src[0], e.src[1]), (e.src[1], e.src[0])):
            if x.op is Op.CONST:
                a = affine(y, query, key)
                if a is not None:
                    return Affine(x.arg * a.cm, x.arg * a.cn, Expr(Op.MUL, (x, a.const)))
    return None


def atom(e: Expr, query: str, key: str) -> Affine:
    """A comparison ``lhs op rhs`` (affine sides) as one form ``d = lhs - rhs``: ``d op 0``."""
    a, b = affine(e.src[0], query, key), affine(e.src[1], query, key)
    return Affine(a.cm - b.cm, a.cn - b.cn, Expr(Op.SUB, (a.const, b.const)))


def tile_decision(pred: Expr, leaf, and_, or_):
    """(true on the whole tile, false on the whole tile) of an affine predicate.

    Three-valued logic over ``& | ~``: full(A & B) = full(A) and full(B),
    empty(A & B) = empty(A) or empty(B), dually for ``|``; ``~`` swaps them.
    ``leaf(e)`` gives the pair for one comparison (a backend evaluates its
    ``atom`` at the tile's corners); ``and_``/``or_`` combine two conditions.
    """
    if pred.op in (Op.AND, Op.OR):
        (f1, e1), (f2, e2) = (tile_decision(s, leaf, and_, or_) for s in pred.src)
        if pred.op is Op.AND:
            return and_(f1, f2), or_(e1, e2)
        return or_(f1, f2), and_(e1, e2)
    if pred.op is Op.NOT:
        f, e = tile_decision(pred.src[0], leaf, and_, or_)
        return e, f
    return leaf(pred)


def domain_decision(pred: Expr, query: str, key: str, m: int, n: int, params: dict) -> tuple[bool, bool]:
    """(true everywhere, false everywhere) of an affine predicate over the whole call,
    queries ``[0, m)`` x keys ``[0, n)``, with the params' values: the extremes of each atom
    are at the domain's corners. A launcher that finds it true everywhere knows no key tile
    is hidden by it."""
    full, empty = corner_decision(pred, query, key, (0, max(m - 1, 0)), (0, max(n - 1, 0)), params)
    return bool(full), bool(empty)


def tiles_hidden(pred: Expr, query: str, key: str, m: int, n: int, block_m: int, block_n: int, params: dict) -> bool:
    """Whether the corner test of the kernels (:func:`tile_decision` at a tile's corners) finds a
    key tile of ``block_n`` keys that is false on a whole query block of ``block_m`` rows: the
    tiles a kernel that skips empty tiles would skip at these sizes."""
    import numpy as np
    m0 = np.arange(0, max(m, 1), block_m, dtype=np.float64)[:, None]
    n0 = np.arange(0, max(n, 1), block_n, dtype=np.float64)[None, :]
    m1 = np.minimum(m0 + block_m, m) - 1
    n1 = np.minimum(n0 + block_n, n) - 1
    _, empty = corner_decision(pred, query, key, (m0, m1), (n0, n1), params)
    return bool(np.any(empty))


def corner_decision(pred: Expr, query: str, key: str, ms, ns, params: dict):
    """(true on the whole rectangle, false on the whole rectangle) of an affine predicate over
    queries ``ms = (first, last)`` x keys ``ns = (first, last)``, with the params' values; the
    bounds may be numpy arrays (one rectangle per element)."""
    import numpy as np

    def value(e: Expr) -> float:
        if e.op is Op.CONST:
            return e.arg
        if e.op is Op.PARAM:
            return float(params[e.arg])
        if e.op is Op.NEG:
            return -value(e.src[0])
        a, b = value(e.src[0]), value(e.src[1])
        return a + b if e.op is Op.ADD else a - b if e.op is Op.SUB else a * b

    def leaf(e: Expr):
        a = atom(e, query, key)
        c = value(a.const)
        ends = [c + a.cm * i + a.cn * j for i in ms for j in ns]
        lo, hi = ends[0], ends[0]
        for x in ends[1:]:
            lo, hi = np.minimum(lo, x), np.maximum(hi, x)
        return range_decision(e.op, lo, hi)

    return tile_decision(pred, leaf, np.logical_and, np.logical_or)


def range_decision(op: Op, lo, hi):
    """(true everywhere, false everywhere) of ``d op 0`` for ``d`` ranging over ``[lo, hi]`` (numbers
    or arrays)."""
    return {Op.LT: (hi < 0, lo >= 0), Op.LE: (hi <= 0, lo > 0), Op.GT: (lo > 0, hi <= 0),
            Op.GE: (lo >= 0, hi < 0), Op.EQ: ((lo == 0) & (hi == 0), (hi < 0) | (lo > 0)),
            Op.NE: ((hi < 0) | (lo > 0), (lo == 0) & (hi == 0))}[op]


def is_affine_predicate(e: Expr, query: str, key: str) -> bool:
    """True if ``e`` is built from affine comparisons in (query, key) with & | ~."""
    if e.op in (Op.AND, Op.OR):
        return all(is_affine_predicate(s, query, key) for s in e.src)
    if e.op is Op.NOT:
        return is_affine_predicate(e.src[0], query, key)
    if e.op in COMPARE:
        a, b = (affine(s, query, key) for s in e.src)
        return a is not None and b is not None and (a.cm or a.cn or b.cm or b.cn)
    return False


def predicates(stmts, query: str, key: str) -> list[Expr]:
    """Distinct affine predicates used as where() conditions, in first-seen order."""
    out: list[Expr] = []
    for s in stmts:
        for e in s.expr.walk():
            if e.op is Op.WHERE and is_affine_predicate(e.src[0], query, key) and e.src[0] not in out:
                out.append(e.src[0])
    return out


def substitute(e: Expr, pred: Expr, value: bool) -> Expr:
    """Replace ``pred`` by a constant truth value and fold ``where``s that it decides."""
    def fn(x: Expr):
        if x.op is Op.WHERE and x.src[0] == pred:
            return x.src[1] if value else x.src[2]
        return None
    return e.replace(fn)


def _fold(e: Expr) -> float | None:
    """The constant value of ``e`` when it is forced (e.g. exp(-inf - x) = 0), else None.

    Reads and running values are assumed finite or -inf (scores, running maxima).
    """
    op = e.op
    if op is Op.CONST:
        return e.arg
    vals = [_fold(s) for s in e.src]
    if op is Op.SUB and vals[0] == -math.inf:
        return -math.inf           # -inf - x (x finite or -inf, by the masked-row rule)
    if op is Op.ADD and -math.inf in vals:
        return -math.inf
    if op in (Op.EXP, Op.EXP2) and vals[0] == -math.inf:
        return 0.0
    if op is Op.MUL and 0.0 in vals:
        return 0.0
    if op is Op.DIV and vals[0] == 0.0:
        return 0.0
    if op in (Op.RELU, Op.NEG, Op.SQUARE, Op.ABS, Op.SIGN) and vals[0] == 0.0:
        return 0.0
    if op in (Op.RELU, Op.SIGMOID, Op.SOFTPLUS) and vals[0] == -math.inf:
        return 0.0                  # a masked score through relu / sigmoid / softplus attention
    if op is Op.MAX and vals[0] == -math.inf:
        return vals[1]
    if op is Op.MAX and vals[1] == -math.inf:
        return vals[0]
    if all(v is not None for v in vals) and op in (Op.ADD, Op.SUB, Op.MUL):
        a, b = vals
        return a + b if op is Op.ADD else a - b if op is Op.SUB else a * b
    return None


def empty_tile_is_identity(loop_stmts: list[Stmt], pred, tiles: set[str]) -> bool:
    """With ``pred`` (one condition, or each of a tuple of them) false everywhere, does every key
    reduction get only its identity?

    ``tiles`` are the names of the tile statements of the pass; their values are
    substituted into the reductions that read them.
    """
    preds = pred if isinstance(pred, tuple) else (pred,)
    folded: dict[str, float | None] = {}
    for s in loop_stmts:
        expr = s.expr
        for p in preds:
            expr = substitute(expr, p, False)

        def inline(x: Expr):
            if x.op is Op.READ and x.arg[0] in folded and folded[x.arg[0]] is not None:
                return Expr.const(folded[x.arg[0]])
            return None
        v = _fold(expr.replace(inline))
        if s.name in tiles:
            folded[s.name] = v
        elif s.reduce is not None and s.reduced:
            want = s.reduce.identity
            if s.reduce is Reduce.SUM:
                if v != 0.0:
                    return False
            elif v != want:
                return False
    return True


def key_block_read(e: Expr, key: str) -> bool:
    """``e`` reads a tensor along the key index at block granularity, ``T[.., n // BS, ..]``."""
    return e.op is Op.READ and any(x.index == key and x.div is not None for x in e.arg[1])


def where_conditions(stmts) -> list[Expr]:
    """Distinct where() conditions, in first-seen order."""
    out: list[Expr] = []
    for s in stmts:
        for e in s.expr.walk():
            if e.op is Op.WHERE and e.src[0] not in out:
                out.append(e.src[0])
    return out
