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
    both = torch.isneginf(a) & torch.isneginf(b)
    return torch.where(both, torch.full_like(d, float("-inf")), d) if both.any() else d


def div_rule(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    zz = (a == 0) & (b == 0)
    if not zz.any():
        return a / b
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
        out_axes = tuple(a for a in s.indices if a in used)
        r = torch.einsum(",".join(terms) + "->" + "".join(letters[a] for a in out_axes), *ops)
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
