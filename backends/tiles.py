"""Key-tile lists of block-sparse kernels, made on the host per call (every kernel target).

A pass with ``sites`` (``compiler/kernel_plan.KernelPass``: where() conditions, one of which
reads a selection as ``Sel[.., n // BS]``) visits, per (grid cell, query tile), only the key
tiles where some condition may hold; the plan proved that a tile where all are false adds
only identities. Each condition is decided per (query tile, key tile) with three-valued logic
(``compiler/masks.tile_decision``) from its atoms:

- ``T[.., n // BS, ..] > c`` (and ``>= < <= == !=`` against a constant or param): from the
  largest and smallest value of ``T`` over the tile's rows and the key blocks the tile spans;
- a comparison of sums of terms ``a * i`` or ``a * (i // P)``, at most one term per index
  (``n <= m``, ``n > m - W``, ``n // BS == m // BS``): each side is monotone in each index, so
  its extremes over a tile are at the corners;
- anything else may hold anywhere.

The lists are int32 ``count [tasks]`` and ``tiles [tasks, key tiles]`` (the visited tiles
ascending first), tasks in the order (grid..., query tile). A NaN or inf in a key-side input
visits every tile, as the dense kernels do (``base.hidden_nonfinite``).
"""
from __future__ import annotations

import math

import torch

from einattn.compiler.masks import key_block_read, range_decision, tile_decision
from einattn.ir import COMPARE, Expr, Op, eval_scalar

from .base import _all_finite_many
from .torch.selection import as_lists

_FLIP = {Op.LT: Op.GT, Op.LE: Op.GE, Op.GT: Op.LT, Op.GE: Op.LE, Op.EQ: Op.EQ, Op.NE: Op.NE}


def visit_lists(kp, inputs: dict, sizes: dict, params: dict, block_m: int, block_n: int,
                pack: tuple[str, int] | None = None):
    """(count, tiles, fraction of (task, key tile) pairs visited) of a block-sparse plan. With
    ``pack = (grid index, PACK)`` (the decode program: a task is PACK heads x block_m query rows)
    a task visits the union of its heads' tiles."""
    m, n = int(sizes[kp.query]), int(sizes[kp.key])
    qt, kt = -(-m // block_m), -(-n // block_n)
    # a grid index every condition reads as ``h // r`` only (a selection per GQA group) is decided once
    # per group and spread to its heads (or packs) at the end: 16 query heads of one KV head cost one
    groups = _grouped_grid(kp, params)
    gshape = [-(-int(sizes[g]) // groups[g]) if g in groups else int(sizes[g]) for g in kp.grid]
    # coordinates in float32: exact below 2**24, and half the traffic of float64
    m0 = torch.arange(qt, dtype=torch.float32)[:, None] * block_m
    m1 = torch.clamp(m0 + block_m, max=m) - 1
    n0 = torch.arange(kt, dtype=torch.float32)[None, :] * block_n
    n1 = torch.clamp(n0 + block_n, max=n) - 1
    ctx = _Ctx(kp, inputs, sizes, params, block_m, block_n, gshape, (m0, m1), (n0, n1), groups)
    if not _finite_key_side(kp, inputs):
        visit = torch.ones(*gshape, qt, kt, dtype=torch.bool)
    else:
        visit = torch.zeros(*gshape, qt, kt, dtype=torch.bool)
        for p in kp.passes:             # passes with sites share the lists; the others visit every tile
            for cond in p.sites:
                _, empty = tile_decision(cond, ctx.leaf, torch.logical_and, torch.logical_or)
                visit |= ~torch.as_tensor(empty, dtype=torch.bool).expand_as(visit)
    for a, r in groups.items():
        j, size = kp.grid.index(a), int(sizes[a])
        p = pack[1] if pack is not None and pack[0] == a else 1
        if p > 1 and r % p == 0:                # every head of a pack in one group
            visit = visit.index_select(j, torch.arange(0, size, p) // r)
            pack = None
        elif p > 1 and p % r == 0:              # a pack of whole groups: the pack step below, over groups
            pack = (a, p // r)
        else:
            visit = visit.index_select(j, torch.arange(size) // r)
    if pack is not None and pack[1] > 1:
        j, p = kp.grid.index(pack[0]), pack[1]
        v = visit.movedim(j, 0)
        v = v.reshape(v.shape[0] // p, p, *v.shape[1:]).any(1)
        visit = v.movedim(0, j)
    visit = visit.reshape(-1, kt)
    count, order = as_lists(visit)
    return count.contiguous(), order.contiguous(), float(visit.double().mean()) if visit.numel() else 0.0



def _grouped_grid(kp, params: dict) -> dict[str, int]:
    """{grid index: r} for each grid index the sites' key-block reads subscript only as ``i // r``,
    one r each (the other atoms are over the query and key indices, or undecided)."""
    seen: dict[str, set] = {}
    for p in kp.passes:
        for cond in p.sites:
            for e in cond.walk():
                if e.op is Op.READ:
                    for x in e.arg[1]:
                        if x.index in kp.grid:
                            seen.setdefault(x.index, set()).add(x.div)
    out = {}
    for a, divs in seen.items():
        if len(divs) == 1 and None not in divs:
            r = params.get(next(iter(divs)))
            if r is not None and float(r).is_integer() and int(r) > 1:
                out[a] = int(r)
    return out


def _finite_key_side(kp, inputs: dict) -> bool:
    names = {e.arg[0] for p in kp.passes for op in p.loop for x in op.exprs for e in x.walk()
             if e.op is Op.READ and kp.cascade.input(e.arg[0]) is not None
             and any(s.index == kp.key for s in e.arg[1])}
    return _all_finite_many([inputs[t] for t in names])


class _Ctx:
    def __init__(self, kp, inputs, sizes, params, block_m, block_n, gshape, ms, ns, groups):
        self.kp, self.inputs, self.sizes, self.params, self.groups = kp, inputs, sizes, params, groups
        self.bm, self.bn, self.gshape, self.ms, self.ns = block_m, block_n, gshape, ms, ns
        self.unknown = (torch.tensor(False), torch.tensor(False))

    def value(self, e: Expr) -> float | None:
        """The number a tile-free expression of constants and params stands for, else None."""
        if not e.is_scalar():
            return None
        try:
            return float(eval_scalar(e, self.params))
        except (ValueError, ZeroDivisionError, OverflowError):
            return None

    def leaf(self, e: Expr):
        """(true on the whole tile, false on the whole tile), [grid.., QT, KT] or broadcastable."""
        if e.op not in COMPARE:
            return self.unknown
        a, b = e.src
        if key_block_read(b, self.kp.key):
            a, b, e = b, a, Expr(_FLIP[e.op], (b, a))
        if key_block_read(a, self.kp.key):
            c = self.value(b)
            r = self.region(a) if c is not None else None
            if r is None:
                return self.unknown
            lo, hi = r
            return range_decision(e.op, lo - c, hi - c)
        sa, sb = _separable(a, self), _separable(b, self)
        if sa is None or sb is None:
            return self.unknown
        terms = {}
        for side, sign in ((sa, 1.0), (sb, -1.0)):
            for i, (coef, div) in side[0].items():
                if i in terms:
                    return self.unknown         # one term per index: monotone, extremes at corners
                terms[i] = (sign * coef, div)
        const = sa[1] - sb[1]
        if set(terms) - {self.kp.query, self.kp.key}:
            return self.unknown
        ends = []
        for mq in self.ms:
            for nk in self.ns:
                v = torch.full((), const, dtype=torch.float32)
                for i, (coef, div) in terms.items():
                    x = mq if i == self.kp.query else nk
                    v = v + coef * (torch.div(x, div, rounding_mode="floor") if div else x)
                ends.append(v)
        lo = ends[0]
        hi = ends[0]
        for x in ends[1:]:
            lo, hi = torch.minimum(lo, x), torch.maximum(hi, x)
        return range_decision(e.op, lo, hi)

    def region(self, r: Expr):
        """(min, max) of a key-block read over each (grid cell, query tile, key tile)."""
        kp, name, subs = self.kp, *r.arg
        t = self.inputs[name]           # min and max are exact in its own dtype
        dims = kp.cascade.input(name).indices
        bs = None
        # reduce over the query rows of each tile, then gather the grid cells and key tiles
        idx: list = []
        axes: list[str] = []
        for d, s in zip(dims, subs):
            if s.index == kp.key:
                bs = int(self.params[s.div])
                axes.append("key")
            elif s.index == kp.query:       # per query row, or per query block (m // P): expanded to rows
                if s.div is not None:
                    rows = torch.div(torch.arange(int(self.sizes[kp.query])), int(self.params[s.div]),
                                     rounding_mode="floor")
                    t = t.index_select(len(axes), rows.clamp(max=t.shape[len(axes)] - 1))
                axes.append("query")
            elif s.index in kp.grid:
                axes.append(s.index)
            else:
                return None
            idx.append(s)
        lo, hi = t, t
        if "query" in axes:
            j = axes.index("query")
            m = int(self.sizes[kp.query])
            qt = -(-m // self.bm)
            pad = qt * self.bm - m

            def pool(x, fill, fn):
                x = x.movedim(j, -1)
                x = torch.nn.functional.pad(x, (0, pad), value=fill)
                return fn(x.reshape(*x.shape[:-1], qt, self.bm), -1).movedim(-1, j)
            lo, hi = pool(lo, math.inf, torch.amin), pool(hi, -math.inf, torch.amax)
        # gather: [grid..., QT?, NB] in the kernel's grid order
        sel = []
        for k, (a, s) in enumerate(zip(axes, idx)):
            if a in kp.grid:
                g = torch.arange(self.gshape[kp.grid.index(a)])     # per group (``_grouped_grid``) or per cell
                if s.div is not None and a not in self.groups:
                    g = torch.div(g, int(self.params[s.div]), rounding_mode="floor")
                shape = [1] * (len(kp.grid) + 2)
                shape[kp.grid.index(a)] = -1
                sel.append(g.reshape(shape))
            elif a == "query":
                sel.append(torch.arange(lo.shape[k]).reshape([1] * len(kp.grid) + [-1, 1]))
            else:
                sel.append(torch.arange(lo.shape[k]).reshape([1] * (len(kp.grid) + 1) + [-1]))
        lo, hi = lo[tuple(sel)], hi[tuple(sel)]          # [grid.., QT or 1, NB]
        # key tile kt spans blocks n0 // bs .. n1 // bs
        nb = lo.shape[-1]
        first = torch.div(self.ns[0][0].long(), bs, rounding_mode="floor")
        last = torch.div(self.ns[1][0].long(), bs, rounding_mode="floor")
        span = int((last - first).max()) + 1 if first.numel() else 1
        los, his = [], []
        for s in range(span):
            b = torch.minimum(first + s, last).clamp(max=nb - 1)
            los.append(lo[..., b])
            his.append(hi[..., b])
        return torch.stack(los).amin(0), torch.stack(his).amax(0)


def _separable(e: Expr, ctx: _Ctx):
    """``({index: (coef, divisor or None)}, const)`` of a sum of ``a * i`` / ``a * (i // P)`` terms."""
    v = ctx.value(e)
    if v is not None:
        return {}, v
    if e.op is Op.INDEX:
        return {e.arg: (1.0, None)}, 0.0
    if e.op is Op.FLOORDIV and e.src[0].op is Op.INDEX:
        d = ctx.value(e.src[1])
        if d is not None and d > 0 and float(d).is_integer():
            return {e.src[0].arg: (1.0, int(d))}, 0.0
        return None
    if e.op is Op.NEG:
        s = _separable(e.src[0], ctx)
        return None if s is None else ({i: (-c, d) for i, (c, d) in s[0].items()}, -s[1])
    if e.op in (Op.ADD, Op.SUB):
        a, b = _separable(e.src[0], ctx), _separable(e.src[1], ctx)
        if a is None or b is None or set(a[0]) & set(b[0]):
            return None
        sg = 1.0 if e.op is Op.ADD else -1.0
        return {**a[0], **{i: (sg * c, d) for i, (c, d) in b[0].items()}}, a[1] + sg * b[1]
    if e.op is Op.MUL:
        for x, y in ((e.src[0], e.src[1]), (e.src[1], e.src[0])):
            c = ctx.value(x)
            s = _separable(y, ctx) if c is not None else None
            if s is not None:
                return {i: (c * k, d) for i, (k, d) in s[0].items()}, c * s[1]
    return None
