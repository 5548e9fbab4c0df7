"""Evaluate cascade statements with torch over index ranges.

Shared by the float64 reference (every index over its full range) and the
streaming executor (the key index over one tile). A statement is evaluated over
its axes (left-hand indices, then reduced ones); every sub-expression is a
tensor broadcastable to those axes. Sums of products go through ``torch.einsum``
so the reference never builds the [.., M, N, D] product of a contraction.

Masked-row convention (docs/spec.md): ``(-inf) - (-inf)`` is ``-inf`` and
``0 / 0`` is ``0``, so a query row whose keys are all masked outputs 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from einattn.ir import Expr, Op, Reduce, Stmt, product_factors

Range = tuple[int, int]


def sub_rule(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a - b
    if not torch.isnan(d).any():            # one pass where no inf - inf (or NaN) occurred
        return d
    both = torch.isneginf(a) & torch.isneginf(b)
    return torch.where(both, torch.full_like(d, float("-inf")), d) if both.any() else d


def div_rule(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    q = a / b
    if not torch.isnan(q).any():            # one pass where no 0 / 0 (or NaN) occurred
        return q
    zz = (a == 0) & (b == 0)
    if not zz.any():
        return q
    # divide by 1 where 0 / 0 is read as 0: the same values, and autograd through the reference
    # gives those entries zero gradients, as einattn's derived backward does (not 0 * inf = NaN)
    q = a / torch.where(zz, torch.ones_like(b), b)
    return torch.where(zz, torch.zeros_like(q), q)


_UNARY = {Op.EXP: torch.exp, Op.EXP2: torch.exp2, Op.LOG: torch.log, Op.LOG2: torch.log2,
          Op.SQRT: torch.sqrt, Op.RSQRT: torch.rsqrt, Op.TANH: torch.tanh, Op.SIGMOID: torch.sigmoid,
          Op.RELU: torch.relu, Op.SOFTPLUS: F.softplus, Op.ABS: torch.abs, Op.SIGN: torch.sign,
          Op.SQUARE: torch.square, Op.NEG: torch.neg, Op.NOT: torch.logical_not}
_BINARY = {Op.ADD: torch.add, Op.SUB: sub_rule, Op.MUL: torch.mul, Op.DIV: div_rule,
           Op.FLOORDIV: lambda a, b: torch.div(a, b, rounding_mode="floor"), Op.MOD: torch.remainder,
           Op.POW: torch.pow, Op.MIN: torch.minimum, Op.MAX: torch.maximum,
           Op.LT: torch.lt, Op.LE: torch.le, Op.GT: torch.gt, Op.GE: torch.ge, Op.EQ: torch.eq,
           Op.NE: torch.ne, Op.AND: torch.logical_and, Op.OR: torch.logical_or}


@dataclass
class Frame:
    """What a statement can see: ranges of indices, tensors and params.

    ``inputs`` are full-size; ``values`` hold intermediates already restricted to
    the current ranges (dims = their left-hand indices); ``running`` overrides
    ``values`` for reads wrapped in ``running(...)``.
    """
    ranges: dict[str, Range]
    inputs: dict[str, tuple[torch.Tensor, tuple[str, ...]]]
    values: dict[str, tuple[torch.Tensor, tuple[str, ...]]]
    params: dict[str, float]
    dtype: torch.dtype
    running: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = field(default_factory=dict)
    device: torch.device | str = "cpu"

    def size(self, i: str) -> int:
        a, b = self.ranges[i]
        return b - a


def align(t: torch.Tensor, dims: tuple[str, ...], axes: tuple[str, ...]) -> torch.Tensor:
    """View ``t`` (named ``dims``) with one dim per axis in ``axes`` (1 where absent)."""
    order = sorted(range(len(dims)), key=lambda j: axes.index(dims[j]))
    t = t.permute(order) if order != list(range(len(dims))) else t
    present = set(dims)
    return t[tuple(slice(None) if a in present else None for a in axes)] if len(axes) != len(dims) else t


class Evaluator:
    def __init__(self, frame: Frame, axes: tuple[str, ...]):
        self.f, self.axes = frame, axes

    def coord(self, i: str) -> torch.Tensor:
        a, b = self.f.ranges[i]
        v = torch.arange(a, b, dtype=self.f.dtype, device=self.f.device)
        return v.reshape([-1 if x == i else 1 for x in self.axes])

    def read(self, e: Expr, running: bool = False) -> torch.Tensor:
        name, subs = e.arg
        f = self.f
        if name in f.inputs:
            t, _ = f.inputs[name]
            for j, s in enumerate(subs):
                a, b = f.ranges[s.index]
                if s.div is not None:
                    idx = torch.div(torch.arange(a, b, device=t.device), int(f.params[s.div]), rounding_mode="floor")
                    t = t.index_select(j, idx)
                elif (a, b) != (0, t.shape[j]):
                    t = t.narrow(j, a, b - a)
            if t.dtype != f.dtype:
                t = t.to(f.dtype)
        else:
            src = f.running if running and name in f.running else f.values
            t, _ = src[name]
            for j, s in enumerate(subs):
                if s.div is not None:           # T[.., n // BS, ..] at a block dim (spec v1.1)
                    a, b = f.ranges[s.index]
                    idx = torch.div(torch.arange(a, b, device=t.device), int(f.params[s.div]), rounding_mode="floor")
                    t = t.index_select(j, idx)
        return align(t, tuple(s.index for s in subs), self.axes)

    def __call__(self, e: Expr) -> torch.Tensor:
        op = e.op
        if op is Op.CONST:
            return torch.tensor(e.arg, dtype=self.f.dtype, device=self.f.device)
        if op is Op.PARAM:
            return torch.tensor(float(self.f.params[e.arg]), dtype=self.f.dtype, device=self.f.device)
        if op is Op.INDEX:
            return self.coord(e.arg)
        if op is Op.READ:
            return self.read(e)
        if op is Op.RUNNING:
            return self.read(e.src[0], running=True)
        if op is Op.WHERE:
            c, a, b = (self(s) for s in e.src)
            return torch.where(c, a, b)
        if op in _UNARY:
            return _UNARY[op](self(e.src[0]))
        return _BINARY[op](self(e.src[0]), self(e.src[1]))


def eval_stmt(s: Stmt, frame: Frame) -> torch.Tensor:
    """Value of ``s`` over the frame's ranges, dims = ``s.indices`` (contiguous)."""
    red = s.reduced
    axes = s.indices + red
    ev = Evaluator(frame, axes)
    out_shape = [frame.size(i) for i in s.indices]
    if s.select:
        from einattn.ir import eval_scalar
        from .selection import amount, select
        value = amount(s, eval_scalar(s.select[1], frame.params, {i: frame.size(i) for i in frame.ranges}))
        return select(ev(s.expr).expand(out_shape), s.select[0], value).contiguous()
    if not red:
        v = ev(s.expr)
        return v.expand(out_shape).contiguous()
    if s.reduce is Reduce.SUM and not any(set(f.indices()) & set(red) for f in product_factors(s.expr)[1]):
        num, den = product_factors(s.expr)
        inner = [f for f in num if set(f.indices()) & set(red)]
        outer_num = [f for f in num if not set(f.indices()) & set(red)]
        outer_den = [f for f in den if not set(f.indices()) & set(red)]
        hot, inner = one_hot(s, inner)
        letters = {a: chr(97 + j) for j, a in enumerate(axes)}
        ops, terms, used = [], [], set()
        for f in inner:
            deps = [a for a in axes if a in set(f.indices())]
            v = ev(f)
            v = v.expand([frame.size(a) if a in deps else v.shape[j] for j, a in enumerate(axes)])
            v = v.reshape([frame.size(a) for a in deps]) if deps else v.reshape(())
            ops.append(v)
            terms.append("".join(letters[a] for a in deps))
            used.update(deps)
        kept = {i for _, _, deps in hot for i in deps}
        out_axes = tuple(a for a in axes if a in used and (a in s.indices or a in kept))
        if ops:
            r = torch.einsum(",".join(terms) + "->" + "".join(letters[a] for a in out_axes), *ops)
        else:
            r = torch.ones((), dtype=frame.dtype, device=frame.device)
        for x, e, deps in hot:
            r, out_axes = scatter_sum(r, out_axes, x, e, deps, frame)
        r = align(r, out_axes, s.indices).expand(out_shape)
        k = len(s.indices)           # outer factors: drop the (size-1) reduced axes
        for f in outer_num:
            v = ev(f)
            r = r * v.reshape(v.shape[:k])
        for f in outer_den:
            v = ev(f)
            r = div_rule(r, v.reshape(v.shape[:k]).expand(r.shape))
        return r.expand(out_shape).contiguous()
    # max/min, or a sum that divides by something depending on a reduced index
    # (evaluated elementwise so the 0/0 = 0 rule holds inside the sum)
    v = ev(s.expr)
    v = v.expand(out_shape + [frame.size(a) for a in red])
    dims = tuple(range(len(s.indices), len(axes)))
    if s.reduce is Reduce.SUM:
        return v.sum(dim=dims).contiguous()
    if v.numel() == 0:                      # no keys at all: the identity of the reduction
        return torch.full(out_shape, s.reduce.identity, dtype=frame.dtype, device=frame.device)
    return (v.amax(dim=dims) if s.reduce is Reduce.MAX else v.amin(dim=dims)).contiguous()


def _conjuncts(e: Expr) -> list[Expr]:
    return _conjuncts(e.src[0]) + _conjuncts(e.src[1]) if e.op is Op.AND else [e]


def one_hot(s: Stmt, inner: list[Expr]) -> tuple[list[tuple[str, Expr, tuple[str, ...]]], list[Expr]]:
    """Split one-hot maps out of a sum's factors: ``where(x == e & rest, 1.0, 0.0)`` with ``x`` a
    left-hand index no other factor reads and ``e`` index arithmetic over summed indices only
    (``I[g,m,j] = P[h,m,c] * where((h // r == g) & (c * CS // SB == j), 1.0, 0.0)``). Each map
    becomes a scatter-add of the sum over ``e``'s indices into ``x`` (``scatter_sum``): O(terms)
    instead of a dense product with a [.., x, e] one-hot tensor. Returns ([(x, e, e's indices)],
    the remaining factors)."""
    red = set(s.reduced)
    hot: list[tuple[str, Expr, tuple[str, ...]]] = []
    out: list[Expr] = []
    taken: set[str] = set()                 # each index in at most one map, as x or as e's index
    for f in inner:
        if not (f.op is Op.WHERE and f.src[1].op is Op.CONST and f.src[1].arg == 1.0
                and f.src[2].op is Op.CONST and f.src[2].arg == 0.0):
            out.append(f)
            continue
        rest, found = [], []
        for a in _conjuncts(f.src[0]):
            pick = None
            if a.op is Op.EQ:
                for x, e in ((a.src[0], a.src[1]), (a.src[1], a.src[0])):
                    deps = tuple(i for i in s.reduced if i in e.indices())
                    if (x.op is Op.INDEX and x.arg in s.indices and not e.reads() and deps
                            and set(e.indices()) <= red):
                        pick = (x.arg, e, deps, a)
                        break
            (found if pick else rest).append(pick or a)
        others = [g for g in inner if g is not f]
        for x, e, deps, atom in found:
            elsewhere = {i for g in others for i in g.indices()} | {i for a in rest for i in a.indices()}
            elsewhere |= {i for y, e2, _, _ in found if y != x for i in (y, *e2.indices())}
            if x in elsewhere or x in taken or taken & set(deps):
                rest.append(atom)
                continue
            hot.append((x, e, deps))
            taken |= {x, *deps}
        if rest:
            cond = rest[0]
            for a in rest[1:]:
                cond = Expr(Op.AND, (cond, a))
            out.append(Expr(Op.WHERE, (cond, f.src[1], f.src[2])))
    return hot, out


def scatter_sum(r: torch.Tensor, axes: tuple[str, ...], x: str, e: Expr, deps: tuple[str, ...],
                frame: Frame) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Sum ``r`` (dims ``axes``) over ``deps`` into index ``x`` at position ``e(deps)``; terms whose
    ``e`` is not an integer inside x's range add nothing (the one-hot row is all zero)."""
    missing = [i for i in deps if i not in axes]
    if missing:                                 # a summed index no other factor reads: ones along it
        r = r.reshape(r.shape + (1,) * len(missing)).expand(*r.shape, *(frame.size(i) for i in missing))
        axes = axes + tuple(missing)
    pos = Evaluator(frame, deps)(e).expand([frame.size(i) for i in deps]).reshape(-1) - frame.ranges[x][0]
    ok = (pos == torch.floor(pos)) & (pos >= 0) & (pos < frame.size(x))
    if len(deps) == 1:                          # in place of the summed dim, no copy
        j = axes.index(deps[0])
        out = torch.zeros(*r.shape[:j], frame.size(x), *r.shape[j + 1:], dtype=r.dtype, device=r.device)
        src = r if bool(ok.all()) else r.index_select(j, ok.nonzero().reshape(-1))
        return out.index_add(j, pos[ok].long(), src), axes[:j] + (x,) + axes[j + 1:]
    rest = tuple(a for a in axes if a not in deps)
    r = r.permute([axes.index(a) for a in rest + deps]).reshape(*(frame.size(a) for a in rest), -1)
    out = torch.zeros(*r.shape[:-1], frame.size(x), dtype=r.dtype, device=r.device)
    return out.index_add(-1, pos[ok].long(), r[..., ok]), rest + (x,)
