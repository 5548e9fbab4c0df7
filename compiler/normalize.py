"""Normalising rewrites: equivalent ways of writing a contraction plan alike.

Each is a pure ``Cascade -> Cascade`` that returns its input object when its
precondition fails (so ``einattn explain`` reports only those that fired). They run
before the pass rewrites and bring forms users write into the shape the kernel
plan tiles: a score contraction is one product of a query-side and a key-side read
times scalars; a value contraction sums ``p * V`` with exactly one value read.

Exactness: every rewrite keeps the summation rule (a term a split statement no
longer sums over an index is multiplied by that index's size, a param the rewrite
adds, ``size_r = r``) and agrees with the reference up to rounding for finite values. Where a rewrite
distributes a factor or pulls a read out of ``where``, its docstring names the
non-finite inputs for which it differs (IEEE has no distributive law at +-inf).
"""
from __future__ import annotations

import dataclasses
import math

from einattn.ir import Cascade, Expr, Op, ParamDecl, Reduce, Stmt, Sub, build_product, product_factors

_SUMS = (Op.ADD, Op.SUB)


def _fresh(c: Cascade, base: str, taken: set[str]) -> str:
    """``base``, or ``base2``, ``base3``...: a name no tensor, param or index has, nor one in
    ``taken`` (which it joins)."""
    names = taken | {s.name for s in c.stmts} | {t.name for t in c.inputs} | {p.name for p in c.params} \
        | set(c.index_names)
    name, k = base, 1
    while name in names:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name


def _contraction(s: Stmt) -> tuple[list[Expr], list[Expr], list[Expr]] | None:
    """(factors carrying a summed index, the other numerator factors, the denominator) of a sum
    statement that the reference evaluates as ``einsum(inner) * outer / den``; None otherwise
    (no summed index, max/min, or a divisor depending on a summed index: evaluated inside the sum)."""
    if s.reduce is not Reduce.SUM or not s.reduced:
        return None
    red = set(s.reduced)
    num, den = product_factors(s.expr)
    if any(set(f.indices()) & red for f in den):
        return None
    inner = [f for f in num if set(f.indices()) & red]
    return inner, [f for f in num if f not in inner], den


def _leaves(e: Expr) -> list[Expr]:
    """The terms of a ``+``/``-`` tree (a term that is not a sum is a leaf)."""
    return [x for y in e.src for x in _leaves(y)] if e.op in _SUMS else [e]


def _map_leaves(e: Expr, fn) -> Expr:
    if e.op in _SUMS:
        return Expr(e.op, tuple(_map_leaves(x, fn) for x in e.src))
    return fn(e)


def _split_sum(c: Cascade, s: Stmt, sum_factor: Expr, inner: list[Expr], outer: list[Expr], den: list[Expr],
               taken: set[str], sizes: dict[str, str]) -> list[Stmt] | None:
    """One statement per term of ``sum_factor`` (times the other inner factors), and ``s``
    itself as the same ``+``/``-`` tree of their reads times ``outer / den``.

    Each term's statement reduces the summed indices it carries. A term that misses some is
    summed over them too by the summation rule, so its read is multiplied by their sizes (a
    param per index, recorded in ``sizes``: index -> param name); a term that carries none is
    inlined. None if a term divides by a tensor free of the summed indices (inside the sum the
    reference applies ``0 / 0 = 0`` to each term; a term statement would divide its sum). A
    scalar divisor moves after the sum, as the reference does for a whole statement: the
    same value unless the divisor is 0."""
    red = set(s.reduced)
    out: list[Stmt] = []
    terms: list[Expr] = []
    for j, leaf in enumerate(_leaves(sum_factor)):
        lnum, lden = product_factors(leaf)
        expr = build_product([g for f in inner for g in (lnum if f is sum_factor else [f])], lden)
        used = set(expr.indices())
        if any(f.indices() and not set(f.indices()) & red for f in product_factors(expr)[1]):
            return None     # a tensor divisor would move out of the sum
        mine = used - set(s.indices)
        for i in sorted(red - mine - set(sizes)):
            sizes[i] = _fresh(c, f"size_{i}", taken)
        times = [Expr(Op.PARAM, (), sizes[i]) for i in sorted(red - mine)]
        if not mine:
            terms.append(build_product([expr] + times, []))
            continue
        idx = tuple(i for i in s.indices if i in used)
        out.append(Stmt(_fresh(c, f"{s.name}_{j + 1}", taken), idx, Reduce.SUM, expr, s.loc))
        terms.append(build_product([Expr.read(out[-1].name, tuple(Sub(i) for i in idx))] + times, []))
    if not out:
        return None
    it = iter(terms)
    combined = _map_leaves(sum_factor, lambda leaf: next(it))
    out.append(Stmt(s.name, s.indices, Reduce.SUM, build_product([combined] + outer, den), s.loc))
    return out


def split_score_sum(c: Cascade) -> Cascade:
    """Split a score contraction over a sum of products into one score statement per term.

    ``S[m,n] = (Q1[m,d]*K1[n,d] + Q2[m,d]*K2[n,d]) * scale`` -> ``S_1 = Q1*K1``;
    ``S_2 = Q2*K2``; ``S = (S_1 + S_2) * scale`` (scalars and divisors stay on the last line).

    Precondition: a statement that keeps the key index and sums over other indices, whose
    only factor carrying a summed index is a ``+``/``-`` of terms. Each term's own statement
    sums over the summed indices it carries and ``sum(a + b) = sum a + sum b``. A term
    missing a summed index is summed over it too (docs/spec.md, summation rule), so its
    read is multiplied by that index's size: FlashBias written in one statement,
    ``Q[m,d]*K[n,d] + Qb[m,r]*Kb[n,r]``, becomes ``S_1*size_r + S_2*size_d``, and a bias
    ``Q*K + B[m,n]`` becomes ``S_1 + B*size_d`` (params ``size_r = r``, ``size_d = d``).
    With no key (an empty sum) a size is 0 and ``0 * inf`` is NaN where the sum is 0.
    A factor times a sum, ``(Q1 + Q2)*K``, is left alone too: distributing it is not exact
    under IEEE where ``K`` is +-inf (``-1 * inf`` is ``-inf``, ``inf - inf`` is NaN).
    Exact up to rounding for ``+``; for ``-``, the masked-row rule ``(-inf) - (-inf) = -inf``
    then applies to the two sums rather than to each pair of products (they differ only when
    both terms hold -inf at different contracted coordinates: NaN as written, -inf split).
    """
    return _split_contractions(c, lambda s: c.key in s.indices, lambda s, f, inner: len(inner) == 1)


def _row_dims(c: Cascade) -> set[str] | None:
    """Indices of the query rows (grid and query index): the first score contraction's left side
    without the key, as the kernel plan derives them. None when there is no score."""
    for s in c.stmts:
        if c.key in s.indices and s.reduce is Reduce.SUM and s.reduced:
            return set(s.indices) - {c.key}
    return None


def _value_reads(c: Cascade, e: Expr, extra: set[str]) -> list[Expr]:
    """Input reads in ``e`` that carry the key and a value index (one of ``extra``)."""
    return [x for x in e.walk() if x.op is Op.READ and c.input(x.arg[0]) is not None
            and c.key in x.indices() and set(x.indices()) & extra]


def _value_contraction(c: Cascade, s: Stmt) -> set[str]:
    """The value indices of a sum over the key that keeps indices beyond the query rows (empty if
    ``s`` is not such a statement)."""
    rows = _row_dims(c)
    if rows is None or s.reduce is not Reduce.SUM or c.key not in s.reduced:
        return set()
    return set(s.indices) - rows


def split_value_sum(c: Cascade) -> Cascade:
    """Split a value contraction over a sum into one value statement per term.

    ``O[m,e] = P[m,n]*V1[n,e] + P[m,n]*V2[n,e]`` (or ``P*(V1 + V2)``, ``(V1 + V2) / L``) ->
    ``O_1 = P*V1``; ``O_2 = P*V2``; ``O = O_1 + O_2`` (key-independent factors and divisors
    stay on the last line, which keeps the name ``O``).

    Precondition: a sum over the key whose left side keeps a value index (an index beyond
    the query rows of the first score statement), whose factors carrying a summed index
    include a ``+``/``-`` that carries a value index. A term missing a summed index is
    multiplied by its size, as in :func:`split_score_sum` (``P*V + G[m,e]`` sums ``G`` over
    ``n``: ``O_1 + G*size_n``). Exact up to rounding for terms already written as
    products (``sum(a + b) = sum a + sum b`` under IEEE); distributing ``P*(V1 + V2)`` differs
    only where ``P`` is +-inf, and ``-`` applies ``(-inf) - (-inf) = -inf`` to the sums.
    """
    def carries_value(s: Stmt, sum_factor: Expr, inner: list[Expr]) -> bool:
        return bool(set(sum_factor.indices()) & _value_contraction(c, s))
    return _split_contractions(c, lambda s: bool(_value_contraction(c, s)), carries_value)


def _split_stmt(c: Cascade, s: Stmt, applies, wants, taken: set[str], sizes: dict) -> list[Stmt] | None:
    parts = _contraction(s)
    if parts is None or not applies(s):
        return None
    inner, outer, den = parts
    sums = [f for f in inner if f.op in _SUMS and wants(s, f, inner)]
    split = _split_sum(c, s, sums[0], inner, outer, den, taken, sizes) if sums else None
    if split is None:
        return None
    out: list[Stmt] = []
    for t in split[:-1]:                   # a term may hold another sum: split it in turn
        out += _split_stmt(c, t, applies, wants, taken, sizes) or [t]
    return out + [split[-1]]


def _split_contractions(c: Cascade, applies, wants) -> Cascade:
    taken: set[str] = set()
    sizes: dict[str, str] = {}
    new, changed = [], False
    for s in c.stmts:
        split = _split_stmt(c, s, applies, wants, taken, sizes)
        changed |= split is not None
        new += split or [s]
    if not changed:
        return c
    # the sizes a term is multiplied by: params the launchers evaluate from the sizes
    params = c.params + tuple(ParamDecl(name, Expr(Op.INDEX, (), i)) for i, name in sizes.items())
    return c.with_stmts(new).with_params(params)


def _where_zero(c: Cascade, x: Expr, extra: set[str]) -> Expr | None:
    """``where(k, a * V, 0)`` -> ``where(k, a, 0) * V`` for value reads ``V`` (either branch);
    ``where(k, a + b, 0)`` -> ``where(k, a, 0) + where(k, b, 0)`` first. None if neither applies."""
    if x.op is not Op.WHERE or _value_reads(c, x.src[0], extra):
        return None
    cond = x.src[0]
    for pos in (1, 2):
        branch, other = x.src[pos], x.src[3 - pos]
        if not (other.op is Op.CONST and other.arg == 0.0) or not _value_reads(c, branch, extra):
            continue

        def where(b: Expr) -> Expr:
            return Expr(Op.WHERE, (cond, b, other) if pos == 1 else (cond, other, b))
        if branch.op in _SUMS:
            return _map_leaves(branch, lambda leaf: _where_zero(c, where(leaf), extra) or where(leaf))
        num, den = product_factors(branch)
        vs = [f for f in num if f.op is Op.READ and _value_reads(c, f, extra)]
        if vs and not den:        # (x*V)/y is 0 where V = y = 0; (x/y)*V would be NaN
            rest = [f for f in num if not any(f is v for v in vs)]
            return build_product([where(build_product(rest, []))] + vs, [])
    return None


def pull_value_reads(c: Cascade) -> Cascade:
    """Move a value read out of ``where`` so the value contraction is a product ``p * V``.

    ``U[m,e] = where(n <= m, V[n,e], 0.0)`` -> ``where(n <= m, 1.0, 0.0) * V[n,e]``; also
    ``where(k, 0.0, V)``, ``where(k, x*V, 0.0)`` -> ``where(k, x, 0.0) * V``, nested
    ``where``s and products, and ``where(k, V1 + V2, 0.0)`` (distributed over the sum first,
    then split by :func:`split_value_sum`).

    Precondition: a sum over the key whose left side keeps a value index (see
    :func:`split_value_sum`), holding a ``where`` whose one branch is the literal ``0`` and
    whose other branch is a product without divisors that has, as a factor, an input read
    carrying the key and a value index (the condition must not read it). Exact wherever that read is finite. Where
    it is NaN or +-inf at a key the condition hides, the reference gives 0 for that key and
    the rewritten form ``0 * NaN = NaN``: the rule of the zoo's ``P * V`` form (docs/spec.md,
    "masked keys are not free of NaN"), which is what the kernels compute for a value
    contraction. Keep a ``where`` on the value itself only if V may hold NaN at hidden keys
    (then use target='reference' or 'streaming' without this form).
    """
    new, changed = [], False
    for s in c.stmts:
        extra = _value_contraction(c, s)
        expr = s.expr.replace(lambda x: _where_zero(c, x, extra)) if extra else s.expr
        changed |= expr != s.expr
        new.append(s if expr == s.expr else dataclasses.replace(s, expr=expr))
    return c.with_stmts(new) if changed else c


def _arrange(fs: list[Expr]) -> list[Expr]:
    consts = [f.arg for f in fs if f.op is Op.CONST]
    k = math.prod(consts)
    return ([f for f in fs if not f.is_scalar()] + ([Expr.const(k)] if consts and k != 1.0 else [])
            + [f for f in fs if f.is_scalar() and f.op is not Op.CONST])


def gather_scalars(c: Cascade) -> Cascade:
    """Gather the scalar factors of a contraction after its tensor factors, numbers multiplied
    into one.

    ``(Q[m,d]*2)*(K[n,d]*scale)``, ``2*scale*Q*K`` and ``Q*(K*scale)*2`` all become
    ``Q*K*2.0*scale``; ``Q*K/(1/scale)`` becomes ``Q*K*scale``... divisors stay divisors
    (``Q*K/scale``), numbers among them multiplied into one. A numerator of numbers equal to 1
    is dropped (``x * 1 = x``).

    Precondition: a sum statement with a summed index whose divisors do not depend on a summed
    index (the reference then computes ``einsum(tensor factors) * scalars / divisors``, in any
    order of the scalars), with a product not already in this order. Exact up to rounding
    (the numbers' product is rounded once). Numbers are plain IEEE: ``0 * inf`` stays NaN.
    """
    new, changed = [], False
    for s in c.stmts:
        if _contraction(s) is None:
            new.append(s)
            continue
        num, den = product_factors(s.expr)
        expr = build_product(_arrange(num), _arrange(den))
        changed |= expr != s.expr
        new.append(s if expr == s.expr else dataclasses.replace(s, expr=expr))
    return c.with_stmts(new) if changed else c


def hoist_score_factors(c: Cascade) -> Cascade:
    """Move the tensor factors of a score contraction that carry no summed index out of it.

    ``S[m,n] = Q[m,d]*K[n,d] * rsqrt(Qn[m]) * rsqrt(Kn[n]) * tau`` (cosine attention) ->
    ``S_dot[m,n] = Q*K*tau``; ``S[m,n] = S_dot[m,n] * rsqrt(Qn[m]) * rsqrt(Kn[n])``.

    Precondition: a sum statement that keeps the key index and sums over others, with a
    numerator or divisor factor that reads a tensor or an index but carries no summed index
    (per-row, per-key or per-(row, key) factors). The reference evaluates such a statement as
    ``einsum(factors with a summed index) * other factors / divisors``; the two statements
    compute the same, in the same order up to the scalars, which stay with the dot product
    (the kernels fold them into it). Exact up to rounding, including at NaN and +-inf.
    """
    taken: set[str] = set()
    new, changed = [], False
    for s in c.stmts:
        parts = _contraction(s) if c.key in s.indices and c.key not in s.reduced else None
        outer_t = [f for f in parts[1] if not f.is_scalar()] if parts else []
        den_t = [f for f in parts[2] if not f.is_scalar()] if parts else []
        if not parts or not (outer_t or den_t) or not parts[0]:
            new.append(s)
            continue
        inner, outer, den = parts
        dot = build_product(inner + [f for f in outer if f.is_scalar()], [f for f in den if f.is_scalar()])
        idx = tuple(i for i in s.indices if i in set(dot.indices()))
        if set(dot.indices()) - set(idx) != set(s.reduced):
            new.append(s)              # a summed index only in the hoisted factors: leave it
            continue
        name = _fresh(c, f"{s.name}_dot", taken)
        new.append(Stmt(name, idx, Reduce.SUM, dot, s.loc))
        read = Expr.read(name, tuple(Sub(i) for i in idx))
        new.append(Stmt(s.name, s.indices, Reduce.SUM, build_product([read] + outer_t, den_t), s.loc))
        changed = True
    return c.with_stmts(new) if changed else c


def name_value_operands(c: Cascade) -> Cascade:
    """Give the value operand of a value contraction a statement of its own when it is an
    expression of inputs along the keys: ``O[m,e] = P[m,n] * (V1[n,e] + V2[n,e] * 0.5)`` ->
    ``O_v[n,e] = V1 + V2 * 0.5``; ``O = P * O_v``.

    Precondition: a sum over the key with a value index (see :func:`split_value_sum`) whose
    factor carrying a value index is not a plain read, reads inputs only, and carries only
    indices its reads carry, the key among them (no query index: ``where(n <= m, V, 0)`` is
    :func:`pull_value_reads`'s). Exact: the reference evaluates that factor before the sum just
    so. The kernels compute such a statement before the kernel (``compiler/statistics.py``,
    one pass over the values) and stream it like any value tensor, where distributing
    ``P * (V1 + V2)`` would differ from the reference wherever ``P`` overflows to +-inf, and
    ``where(n < Pf, V, 0)`` stays exact for NaN at hidden keys.
    """
    inputs = {t.name for t in c.inputs}
    taken: set[str] = set()
    new, changed = [], False
    for s in c.stmts:
        extra = _value_contraction(c, s)
        parts = _contraction(s) if extra else None
        repl: dict[Expr, Expr] = {}
        for f in (parts[0] if parts else ()):
            reads = [e for e in f.walk() if e.op is Op.READ]
            carried = [x.index for e in reads for x in e.arg[1]]
            if f.op is Op.READ or not set(f.indices()) & extra or not reads \
                    or any(e.arg[0] not in inputs for e in reads) \
                    or c.key not in carried or not set(f.indices()) <= set(carried):
                continue
            idx = tuple(dict.fromkeys(i for i in carried if i in set(f.indices())))
            name = _fresh(c, f"{s.name}_v", taken)
            new.append(Stmt(name, idx, Reduce.SUM, f, s.loc))
            repl[f] = Expr.read(name, tuple(Sub(i) for i in idx))
        if repl:
            changed = True
            s = dataclasses.replace(s, expr=s.expr.replace(lambda x: repl.get(x)))
        new.append(s)
    return c.with_stmts(new) if changed else c


def finite_only_inputs(plan) -> dict[str, Stmt]:
    """Inputs that :func:`pull_value_reads` moved out of a ``where`` in ``plan`` (a compiler
    ``Plan``), each with the statement that read it there: the planned cascade matches the
    reference only while they are finite, so a launcher refuses a call where one holds NaN or
    +-inf instead of answering NaN where the reference answers a number (``einattn/kernel.py``)."""
    before = plan.original
    for name, stage in plan.stages:
        if name == "pull_value_reads":
            break
        before = stage
    else:
        return {}
    out: dict[str, Stmt] = {}
    for s in before.stmts:
        extra = _value_contraction(before, s)
        for x in (s.expr.walk() if extra else ()):
            if _where_zero(before, x, extra) is not None:
                out.update(dict.fromkeys((e.arg[0] for e in _value_reads(before, x, extra)), s))
    return out
