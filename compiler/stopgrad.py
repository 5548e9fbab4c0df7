"""Stop-gradient for stabilisers: find statements whose total gradient is zero.

Softmax subtracts a row maximum ``M`` before ``exp`` only to keep it finite: shifting
``M`` by any amount leaves every normalised output unchanged, so the gradient that
reaches ``M`` sums to zero. Differentiating through it anyway would add a one-hot
``argmax`` term and, in a kernel, a spurious pass over the keys.

``stabilisers(c)`` proves the shift invariance symbolically. It perturbs one statement
``X`` by an infinitesimal ``delta`` (the same at every coordinate it is compared with)
and propagates a *tangent* through the cascade, in one of three forms per value:
``add(k)`` (the value moves by ``k * delta``), ``log(k)`` (it is multiplied by
``1 + k * delta``) or unknown; ``k`` is a polynomial in the params. The rules are exact
(``exp`` of ``add(k)`` is ``log(k)``; products add ``log`` rates; ``log`` of ``log(k)``
is ``add(k)``; a sum over indices that ``X`` does not carry keeps ``log(k)``; a max keeps
either form), and anything else is unknown. ``X`` is a stabiliser when every output
ends with a zero tangent: ``O = sum_n exp(S - M) V / sum_n exp(S - M)`` is
``log(-1 - (-1)) = log(0)``, and ``lse = M + log(L)`` is ``add(1 - 1)``.
"""
from __future__ import annotations

import math

from einattn.ir import Cascade, Expr, Op, Reduce

Poly = tuple[tuple[tuple[str, ...], float], ...]     # sorted ((monomial of params), coefficient)
ANY = "any"                                          # a wildcard rate: the value is 0 or +-inf


def _poly(d: dict) -> Poly:
    return tuple(sorted((m, c) for m, c in d.items() if c != 0.0))


def _padd(a: Poly, b: Poly, sign: float = 1.0) -> Poly:
    d = dict(a)
    for m, c in b:
        d[m] = d.get(m, 0.0) + sign * c
    return _poly(d)


def _pscale(a: Poly, e: Expr) -> Poly | None:
    """``a`` times a constant or a param; None for anything else."""
    if e.op is Op.CONST and math.isfinite(e.arg):
        return _poly({m: c * e.arg for m, c in a})
    if e.op is Op.PARAM:
        return _poly({tuple(sorted(m + (e.arg,))): c for m, c in a})
    return None


ONE: Poly = (((), 1.0),)
ZERO_T = ("zero", ())           # a value that does not move (both add(0) and log(0))


def _kind(t, want: str):
    """The rate of ``t`` read as ``want`` ("add" or "log"), or None."""
    if t == ZERO_T:
        return ()
    if t is not None and t[0] == want:
        return t[1]
    return None


def _same(ts: list, want: str):
    rates = [_kind(t, want) for t in ts]
    if any(r is None for r in rates):
        return None
    known = {r for r in rates if r != ANY}
    if len(known) > 1:
        return None
    return (want, known.pop() if known else ())


def _const_tangent(e: Expr):
    """Constants do not move; 0 also fits any ``log`` rate and +-inf any ``add`` rate."""
    if e.op is Op.CONST and e.arg == 0.0:
        return ("log", ANY)
    if e.op is Op.CONST and math.isinf(e.arg):
        return ("add", ANY)
    return ZERO_T


def _tangent(e: Expr, state: dict, x_dims: set[str]):
    t = _tangent_of(e, state, x_dims)
    return ZERO_T if t in (("add", ()), ("log", ())) else t       # rate 0: the value does not move


def _tangent_of(e: Expr, state: dict, x_dims: set[str]):
    if e.op is Op.READ:
        return state.get(e.arg[0], ZERO_T)
    if e.op in (Op.CONST, Op.PARAM, Op.INDEX):
        return _const_tangent(e)
    ts = [_tangent(s, state, x_dims) for s in e.src]
    if all(t == ZERO_T or (t is not None and t[1] == ANY) for t in ts):
        return ZERO_T                   # constants and values that do not move
    op = e.op
    if op in (Op.ADD, Op.SUB, Op.MAX, Op.MIN):
        ra, rb = (_kind(t, "add") for t in ts)
        if ra is not None and rb is not None:
            if ANY in (ra, rb):
                return ("add", rb if ra == ANY else ra)
            if op in (Op.ADD, Op.SUB):
                return ("add", _padd(ra, rb, -1.0 if op is Op.SUB else 1.0))
            return ("add", ra) if ra == rb else None
        return _same(ts, "log")
    if op is Op.NEG:
        ra = _kind(ts[0], "add")
        if ra is not None:
            return ("add", _padd((), ra, -1.0))
        return ts[0] if _kind(ts[0], "log") is not None else None
    if op is Op.MUL:
        la, lb = (_kind(t, "log") for t in ts)
        if la is not None and lb is not None:
            return ("log", lb if la == ANY else la if lb == ANY else _padd(la, lb))
        for j in (0, 1):                # add(k) times a scalar that does not move
            ra = _kind(ts[j], "add")
            if ra is not None and ts[1 - j] == ZERO_T:
                k = _pscale(ra, e.src[1 - j])
                return None if k is None else ("add", k)
        return None
    if op is Op.DIV:
        la, lb = _kind(ts[0], "log"), _kind(ts[1], "log")
        if la is not None and lb is not None and lb != ANY:
            return ("log", la if la == ANY else _padd(la, lb, -1.0))
        ra = _kind(ts[0], "add")
        if ra is not None and ra != ANY and ts[1] == ZERO_T and e.src[1].op is Op.CONST and e.src[1].arg:
            return ("add", _pscale(ra, Expr.const(1.0 / e.src[1].arg)))
        return None
    if op in (Op.EXP, Op.EXP2):
        ra = _kind(ts[0], "add")
        if ra is None:
            return None
        if ra == ANY:
            return ("log", ANY)
        return ("log", ra if op is Op.EXP else _pscale(ra, Expr.const(math.log(2.0))))
    if op in (Op.LOG, Op.LOG2):
        la = _kind(ts[0], "log")
        if la is None or la == ANY:
            return None
        return ("add", la if op is Op.LOG else _pscale(la, Expr.const(1.0 / math.log(2.0))))
    if op in (Op.RELU, Op.ABS):
        return ts[0] if _kind(ts[0], "log") is not None else None
    if op is Op.WHERE:
        if ts[0] != ZERO_T:
            return None
        return _same(ts[1:], "add") if _same(ts[1:], "add") is not None else _same(ts[1:], "log")
    return None


def is_shift_invariant(c: Cascade, x: str) -> bool:
    """Whether every output of ``c`` is unchanged when statement ``x`` moves by a constant."""
    s0 = c.stmt(x)
    x_dims = set(s0.indices)
    state: dict = {x: ("add", ONE)}
    for s in c.stmts[c.stmts.index(s0) + 1:]:
        if not set(s.expr.reads()) & set(state):
            continue
        t = _tangent(s.expr, state, x_dims)
        if t is not None and t != ZERO_T and s.reduced:
            if set(s.reduced) & x_dims:        # the rate would vary across the reduced coordinates
                t = None
            elif s.reduce is Reduce.SUM and _kind(t, "log") is None:
                t = None
        if t is not None and t[1] == ANY:
            t = ZERO_T                          # a constant (0 or +-inf)
        state[s.name] = t
    return all(state.get(o, ZERO_T) == ZERO_T for o in c.outputs)


def stabilisers(c: Cascade) -> tuple[str, ...]:
    """Statements whose total gradient is zero (shift-invariant outputs), in cascade order.
    Only statements that are not outputs and that some statement reads are candidates."""
    read = {r for s in c.stmts for r in s.expr.reads()}
    return tuple(s.name for s in c.stmts
                 if s.name not in c.outputs and s.name in read and is_shift_invariant(c, s.name))
