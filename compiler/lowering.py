"""Lowering rules: backend-neutral tile optimisations computed from the kernel plan.

Each rule is a pure function of the kernel plan and one pass that returns plain
data (names, reads); the renderers consume it instead of deriving it themselves,
and ``einattn explain SPEC --kernel`` prints what each did. A backend for which a
rule brings nothing ignores it (see ``docs/backends.md``):

============================ ======= ===========================================
rule                          cpu     triton
============================ ======= ===========================================
``alias_copies``              used    ignored (a copy is a free variable binding)
``fuse_row_reductions``       used    ignored (Triton fuses the loops itself)
``stage_dense_reads``         used    ignored (tiles are loaded with ``tl.load``)
``hoist_key_free_reads``      ignored used (loads printed once before the key loop)
============================ ======= ===========================================
"""
from __future__ import annotations

from einattn.ir import Expr, Op, Sub

from .kernel_plan import Kind, KernelPass, KernelPlan
from .masks import substitute


def _tile_expr(p: KernelPass, e: Expr, full: bool) -> Expr:
    return substitute(e, p.mask, True) if full and p.mask is not None else e


def _all_tiles(kp: KernelPlan) -> set[str]:
    return {name for q in kp.passes for name in q.tiles}


def alias_copies(kp: KernelPlan, p: KernelPass, full: bool) -> dict[str, str]:
    """MAP tiles that are a copy of another tile, read from that tile instead of being stored.

    A copy is a MAP whose expression (with the pass's mask replaced by true when
    ``full``: the mask holds on the whole tile) is one read of another tile with the
    MAP's own subscripts, such as ``P = where(mask, S, -inf)`` on a full tile. Chains
    resolve to the first tile. O(ops).

    Returns:
        copy name -> the tile it reads.
    """
    tiles, out = _all_tiles(kp), {}
    for op in p.loop:
        if op.kind is Kind.MAP:
            e = _tile_expr(p, op.expr, full)
            if e.op is Op.READ and e.arg[0] in tiles and e.arg[1] == tuple(Sub(d) for d in op.dims):
                out[op.name] = out.get(e.arg[0], e.arg[0])
    return out


def fuse_row_reductions(kp: KernelPlan, p: KernelPass, full: bool) -> dict[str, str]:
    """Row reductions computed in the loop of the MAP just before them (one sweep over the tile).

    A ROW_REDUCE fuses when the op rendered just before it (copies from
    :func:`alias_copies` are not rendered) is a MAP that does not read the reduction.
    Only the first reduction after a MAP fuses. O(ops).

    Returns:
        reduction name -> name of the MAP whose loop computes it.
    """
    alias = alias_copies(kp, p, full)
    out, prev = {}, None
    for op in p.loop:
        if op.name in alias:
            continue
        if op.kind is Kind.ROW_REDUCE and prev is not None and prev.kind is Kind.MAP \
                and op.name not in prev.expr.reads():
            out[op.name] = prev.name
        prev = op
    return out


def stage_dense_reads(kp: KernelPlan, p: KernelPass) -> tuple[Expr, ...]:
    """Input reads of the pass's tile expressions laid out [.., m, n] (a dense bias or mask).

    Such a read has the key as its last subscript and also carries the query: its
    rows run along the keys, so one contiguous copy per key tile replaces a gather
    in every tile loop that reads it. Reads of MAP, ROW_REDUCE and VALUE weight
    expressions, first-seen order, each once.
    """
    c, found = kp.cascade, {}
    for op in p.loop:
        if op.kind in (Kind.MAP, Kind.ROW_REDUCE, Kind.VALUE):
            for e in (op.weights if op.kind is Kind.VALUE else op.expr).walk():
                if e.op is Op.READ and c.input(e.arg[0]) is not None:
                    subs = e.arg[1]
                    if subs and subs[-1] == Sub(kp.key) and any(x.index == kp.query for x in subs):
                        found.setdefault(e, None)
    return tuple(found)


def hoist_key_free_reads(kp: KernelPlan, p: KernelPass) -> tuple[Expr, ...]:
    """Input reads in the pass's key loop that do not carry the key index (loop invariants).

    They are loaded once per query tile, before the key loop. The dot operands
    (score query/key reads, the value read) are loaded apart and are not listed.
    First-seen order, each once.
    """
    c, found = kp.cascade, {}
    for op in p.loop:
        exprs = {Kind.SCORE: lambda o: (o.scalars,), Kind.VALUE: lambda o: (o.weights,)}.get(
            op.kind, lambda o: (o.expr,))(op)
        for x in exprs:
            for e in x.walk():
                if e.op is Op.READ and c.input(e.arg[0]) is not None \
                        and all(s.index != kp.key for s in e.arg[1]):
                    found.setdefault(e, None)
    return tuple(found)


RULES = ("alias_copies", "fuse_row_reductions", "stage_dense_reads", "hoist_key_free_reads")


def describe_rules(kp: KernelPlan) -> list[str]:
    """One line per (rule, pass) that changes something: the rule's name and what it did."""
    lines = []
    for p in kp.passes:
        for rule, fn, say in (("alias_copies", alias_copies, "{k} reads tile {v} (a copy)"),
                              ("fuse_row_reductions", fuse_row_reductions, "{k} reduced in the loop of {v}")):
            full, partial = fn(kp, p, True), fn(kp, p, False)
            for where, found in ((("", full),) if full == partial else
                                 ((" (full tiles)", full), (" (partial tiles)", partial))):
                if found:
                    lines.append(f"pass {p.index}: {rule}{where}: "
                                 + ", ".join(say.format(k=k, v=v) for k, v in found.items()))
        s = stage_dense_reads(kp, p)
        if s:
            lines.append(f"pass {p.index}: stage_dense_reads: copied per key tile: " + ", ".join(map(str, s)))
        h = hoist_key_free_reads(kp, p)
        if h:
            lines.append(f"pass {p.index}: hoist_key_free_reads: loaded before the key loop: "
                         + ", ".join(map(str, h)))
    return lines
