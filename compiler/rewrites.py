"""Rewrites that reduce the passes over the keys, each a pure ``Cascade -> Cascade``.

Every rewrite returns its input unchanged (the same object) when its
precondition does not hold, so the pipeline can report which ones fired.
"""
from __future__ import annotations

import dataclasses

from einattn.ir import Cascade, Expr, Op, Reduce, Stmt, Sub, build_product, product_factors

from .normalize import (_fresh, gather_scalars, hoist_score_factors, name_value_operands, pull_value_reads, split_score_sum,
                        split_value_sum)
from .passes import Role, place


def prune_unused(c: Cascade) -> Cascade:
    """Drop statements no output depends on.

    Precondition: none. Keeps the kernel from computing (and the pass analysis
    from counting) dead statements.
    """
    live = set(c.outputs)
    keep = []
    for s in reversed(c.stmts):
        if s.name in live:
            keep.append(s)
            live.update(s.expr.reads())
    return c if len(keep) == len(c.stmts) else c.with_stmts(reversed(keep))


def defer_normalization(c: Cascade) -> Cascade:
    """Move key-independent factors out of a sum over the keys.

    ``O = sum_n P*V / L`` -> ``O_u = sum_n P*V``; ``O = O_u / L``.
    Precondition: a statement summing over the key index whose right side is a
    product (``*``, ``/``) with at least one factor that reads a tensor and does
    not depend on any reduced index. Exact by distributivity (and keeps the
    masked-row rule: the division then sees 0 / 0 = 0).
    """
    new, taken, changed = [], set(), False
    for s in c.stmts:
        if s.reduce is not Reduce.SUM or c.key not in s.reduced:
            new.append(s)
            continue
        red = set(s.reduced)
        num, den = product_factors(s.expr)
        free = lambda f: not (set(f.indices()) & red) and f.reads()
        out_num, out_den = [f for f in num if free(f)], [f for f in den if free(f)]
        if not out_num and not out_den:
            new.append(s)
            continue
        in_num, in_den = [f for f in num if not free(f)], [f for f in den if not free(f)]
        inner_idx = {i for f in in_num + in_den for i in f.indices()}
        acc_idx = tuple(i for i in s.indices if i in inner_idx)
        acc = _fresh(c, f"{s.name}_u", taken)
        taken.add(acc)
        new.append(Stmt(acc, acc_idx, Reduce.SUM, build_product(in_num, in_den), s.loc))
        read = Expr.read(acc, tuple(Sub(i) for i in acc_idx))
        new.append(Stmt(s.name, s.indices, Reduce.SUM, build_product([read] + out_num, out_den), s.loc))
        changed = True
    return c.with_stmts(new) if changed else c


class _NoRewrite(Exception):
    pass


def _taint(e: Expr, m: str, tiles: dict[str, str], bases: set[str]) -> int:
    """Degree of ``e`` in the factor base**(-m) (0 or 1); _NoRewrite if not linear.

    ``tiles`` maps tainted tile tensors to their base ("exp"/"exp2"); the bases
    met are added to ``bases``.
    """
    op = e.op
    if op in (Op.CONST, Op.PARAM, Op.INDEX):
        return 0
    if op is Op.READ:
        if e.arg[0] == m:
            raise _NoRewrite(f"{m} read outside exp(x - {m})")
        if e.arg[0] in tiles:
            bases.add(tiles[e.arg[0]])
            return 1
        return 0
    if op in (Op.EXP, Op.EXP2) and e.src[0].op is Op.SUB and e.src[0].src[1].op is Op.READ \
            and e.src[0].src[1].arg[0] == m:
        if _taint(e.src[0].src[0], m, tiles, bases):
            raise _NoRewrite("nested")
        bases.add(op.value)
        return 1
    ds = [_taint(x, m, tiles, bases) for x in e.src]
    if not any(ds):
        return 0
    zero = lambda x: x.op is Op.CONST and x.arg == 0.0
    if op is Op.MUL and sum(ds) == 1:
        return 1
    if op is Op.DIV and ds[1] == 0:
        return ds[0]
    if op is Op.NEG:
        return 1
    if op in (Op.ADD, Op.SUB) and (ds[0] == ds[1] or zero(e.src[0]) or zero(e.src[1])):
        return 1
    if op is Op.WHERE and ds[0] == 0 and (ds[1] == ds[2] or zero(e.src[1]) or zero(e.src[2])):
        return 1
    raise _NoRewrite(f"{op.value} is not linear in exp(x - {m})")


def _wrap_running(e: Expr, names: set[str]) -> Expr:
    def fn(x: Expr):
        if x.op is Op.READ and x.arg[0] in names:
            return Expr(Op.RUNNING, (x,))
        return None
    # do not wrap twice
    def undo(x: Expr):
        if x.op is Op.RUNNING and x.src[0].op is Op.RUNNING:
            return x.src[0]
        return None
    return e.replace(fn).replace(undo)


def _try_online(c: Cascade, m: str) -> Cascade | None:
    pl = place(c)
    pm = pl[m].pass_no
    key = c.key
    if pm < 1 or pl[m].role not in (Role.REDUCE, Role.ROW, Role.RUNNING_ROW):
        return None
    # the cone of m inside its pass: max reductions over keys and key-free rows over them
    cone, todo = set(), [m]
    while todo:
        x = todo.pop()
        s = c.stmt(x)
        if s is None or x in cone:
            continue
        p = pl[x]
        if p.role is Role.REDUCE:
            if s.reduce is not Reduce.MAX or set(s.reduced) != {key}:
                return None
            cone.add(x)
            continue
        if p.role in (Role.ROW, Role.RUNNING_ROW) and p.pass_no == pm:
            cone.add(x)
            todo += [r for r in s.expr.reads() if c.stmt(r) is not None and pl[r].pass_no == pm]
            continue
        if p.pass_no < pm:
            continue
        return None
    dims_m = set(c.stmt(m).indices)
    tiles: dict[str, str] = {}
    rescale: dict[str, str] = {}
    readers = set()
    try:
        for s in c.stmts:
            reads = set(s.expr.reads())
            if pl[s.name].role is Role.TILE and (m in reads or reads & set(tiles)):
                bases: set[str] = set()
                d = _taint(s.expr, m, tiles, bases)
                if d:
                    if len(bases) != 1:
                        return None
                    tiles[s.name] = bases.pop()
                if m in reads:
                    readers.add(s.name)
            elif pl[s.name].role is Role.REDUCE and (m in reads or reads & set(tiles)):
                bases = set()
                d = _taint(s.expr, m, tiles, bases)
                if d:
                    if s.reduce is not Reduce.SUM or not dims_m <= set(s.indices) or len(bases) != 1:
                        return None
                    rescale[s.name] = bases.pop()
                if m in reads:
                    readers.add(s.name)
    except _NoRewrite:
        return None
    if not readers:
        return None
    new = []
    for s in c.stmts:
        if s.name in readers:
            s = Stmt(s.name, s.indices, s.reduce, _wrap_running(s.expr, {m}), s.loc, s.rescale)
        elif s.name in cone and pl[s.name].role is not Role.REDUCE:
            s = Stmt(s.name, s.indices, s.reduce, _wrap_running(s.expr, cone), s.loc, s.rescale)
        if s.name in rescale:
            s = Stmt(s.name, s.indices, s.reduce, s.expr, s.loc, s.rescale + ((m, rescale[s.name]),))
        new.append(s)
    return c.with_stmts(new)


def online_rescaling(c: Cascade) -> Cascade:
    """Replace ``exp(x - max_n x)`` by a running max with rescaled running sums.

    Precondition: a key-free row tensor M that is a max over the keys (or a
    key-free function of such maxes and earlier rows, e.g. ``max(M0, sink)``)
    is read by key-iterating statements only as ``exp(x - M)`` / ``exp2(x - M)``,
    and every value built from those exponentials reaches a reduction only as a
    sum over the keys that is linear in them. Then each such sum is kept
    relative to the running M and multiplied by ``exp(old M - new M)`` whenever
    M grows (the FlashAttention form; FuseMax's RM/PRM/RD/RNV cascade). After
    the last key tile the running M is M, so the result is exact.
    """
    pl = place(c)
    cands = [s.name for s in c.stmts
             if c.key not in s.all_indices or (s.reduce is Reduce.MAX and s.reduced == (c.key,))]
    for m in cands:
        if not any(pl[x.name].pass_no > pl[m].pass_no and m in x.expr.reads() for x in c.stmts):
            continue
        r = _try_online(c, m)
        if r is not None:
            c = r
            pl = place(c)
    return c


def _fold(e: Expr) -> Expr:
    src = tuple(_fold(x) for x in e.src)
    e = Expr(e.op, src, e.arg) if src != e.src else e
    zero = lambda x: x.op is Op.CONST and x.arg == 0.0    # noqa: E731
    one = lambda x: x.op is Op.CONST and x.arg == 1.0     # noqa: E731
    if e.op is Op.SUB and zero(src[1]) or e.op is Op.ADD and zero(src[1]) or e.op in (Op.MUL, Op.DIV) and one(src[1]):
        return src[0]
    if e.op is Op.ADD and zero(src[0]) or e.op is Op.MUL and one(src[0]):
        return src[1]
    if e.op is Op.NEG and src[0].op is Op.NEG:
        return src[0].src[0]
    if (e.op is Op.NEG or e.op is Op.SUB and zero(src[0])) and any(x.op is Op.READ for x in src[-1].walk()):
        return Expr(Op.MUL, (Expr.const(-1.0), src[-1]))  # a factor, so -Q*K plans as a score
    return e


def fold_identities(c: Cascade) -> Cascade:
    """Fold ``x - 0``, ``x + 0``, ``x * 1``, ``x / 1``, ``-(-x)``, and write a negated value
    (``-x``, ``0 - x``) as ``-1 * x``.

    Precondition: none. Exact under IEEE arithmetic (a NaN stays NaN, ``-0.0`` stays ``-0.0``;
    ``0 - x`` is ``-x`` except that ``0 - 0`` is ``+0``); it makes ``-Q*K*scale``,
    ``(0 - Q)*K`` and ``Q*K*scale - 0`` plan like ``Q*K*scale * -1``: products of reads and
    scalars.
    """
    new = [s if _fold(s.expr) == s.expr else dataclasses.replace(s, expr=_fold(s.expr)) for s in c.stmts]
    return c if all(a is b for a, b in zip(new, c.stmts)) else c.with_stmts(new)


PIPELINE = (
    ("fold_identities", fold_identities),
    ("split_score_sum", split_score_sum),
    ("name_value_operands", name_value_operands),
    ("pull_value_reads", pull_value_reads),
    ("split_value_sum", split_value_sum),
    ("gather_scalars", gather_scalars),
    ("hoist_score_factors", hoist_score_factors),
    ("prune_unused", prune_unused),
    ("defer_normalization", defer_normalization),
    ("online_rescaling", online_rescaling),
)
