"""The op table: one handler per core ATen op (and the Python operators on sizes) the converter
accepts. Anything else is an ``UnsupportedError`` naming the op, the user's line and this list."""
from __future__ import annotations

import math
import operator

import sympy
import torch

from einattn.ir import Expr, Op, Reduce

from .convert import NEG_INF, Converter, size_of
from .values import Cat, Scalar, T, index, read

aten = torch.ops.aten
HANDLERS: dict = {}


def handles(*targets):
    def deco(fn):
        for t in targets:
            HANDLERS[t] = fn
        return fn
    return deco


def shape_of(node) -> tuple:
    return tuple(node.meta["val"].shape)


# -- layout: no arithmetic, atoms move between dims ------------------------------------------
@handles(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default, aten.detach.default,
         aten.contiguous.default)
def _identity(c: Converter, node, x, *_, **__):
    return x


@handles(aten._to_copy.default)
def _to_copy(c, node, x, **kw):
    dt = kw.get("dtype")
    if dt is not None and not dt.is_floating_point and isinstance(x, T) and not x.boolean and dt is not torch.bool:
        raise c.unsupported(f"a cast to {dt}", "Keep scores and weights floating point")
    return x


@handles(aten.permute.default)
def _permute(c, node, x, perm):
    if isinstance(x, Cat):
        rank = len(x.dims)
        perm = [p % rank for p in perm]
        return Cat(tuple(_permute(c, node, p, perm) for p in x.pieces), perm.index(x.dim), x.node)
    return T(x.expr, tuple(x.dims[p] for p in perm), x.boolean)


@handles(aten.unsqueeze.default)
def _unsqueeze(c, node, x, dim):
    x = c.operand(x)
    rank = len(x.dims) + 1
    dim %= rank
    dims = list(x.dims)
    dims.insert(dim, (c.A.new(sympy.Integer(1), 1, True),))
    return T(x.expr, tuple(dims), x.boolean)


@handles(aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default)
def _squeeze(c, node, x, dims=None):
    x = c.operand(x)
    rank = len(x.dims)
    if dims is None:
        dims = [d for d in range(rank) if c.ghint(x.dims[d]) == 1]
    dims = {d % rank for d in ([dims] if isinstance(dims, int) else dims)}
    return T(x.expr, tuple(g for d, g in enumerate(x.dims) if d not in dims or c.ghint(g) != 1), x.boolean)


@handles(aten.expand.default)
def _expand(c, node, x, sizes, *_):
    x = c.operand(x)
    out_shape = shape_of(node)
    lead = len(out_shape) - len(x.dims)
    dims = []
    used = c.used(x)
    for i, s in enumerate(out_shape):
        size, hint = size_of(s)
        if i < lead:
            dims.append((c.A.new(size, hint, True),))
            continue
        g = x.dims[i - lead]
        if c.ghint(g) == hint:
            dims.append(g)
            continue
        for a in g:
            if c.A.find(a) in used:
                c.A.dropped.add(c.A.find(a))
        dims.append((c.A.new(size, hint, True),))
    return T(x.expr, tuple(dims), x.boolean)


@handles(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _view(c, node, x, shape):
    x = c.operand(x)
    used = c.used(x)
    flat = [a for g in x.dims for a in g if c.A.hint(a) != 1 or c.A.find(a) in used]
    out, k = [], 0
    for s in shape_of(node):
        size, hint = size_of(s)
        if hint == 1:
            if k < len(flat) and c.A.hint(flat[k]) == 1:
                out.append((flat[k],))
                k += 1
            else:
                out.append((c.A.new(size, 1, True),))
            continue
        grp, p = [], 1
        while k < len(flat) and p < hint:
            grp.append(flat[k])
            p *= c.A.hint(flat[k])
            k += 1
        if p != hint:
            raise c.unsupported(
                f"a reshape that splits a dimension (to {[size_of(t)[1] for t in shape_of(node)]} from "
                f"{[c.ghint(g) for g in x.dims]})",
                "Reshape inputs before the call so that each index (batch, head, position, feature) is a "
                "dimension of its own, e.g. q.view(b, n, h, d).transpose(1, 2) for packed heads [b, n, h*d]")
        out.append(tuple(grp))
    if k < len(flat):
        if out and all(c.A.hint(a) == 1 for a in flat[k:]):
            out[-1] = out[-1] + tuple(flat[k:])
        else:
            raise c.unsupported("a reshape that drops a dimension", "Reshape without dropping dimensions")
    return T(x.expr, tuple(out), x.boolean)


@handles(aten.slice.Tensor)
def _slice(c, node, x, dim=0, start=None, end=None, step=1):
    rank = len(x.dims)
    dim %= rank
    full = c.ghint(x.dims[dim])
    if isinstance(x, Cat):
        sizes = [c.ghint(p.dims[dim]) for p in x.pieces]
        full = sum(sizes)
        lo = 0 if start is None else _int(start)
        hi = full if end is None else _int(end)
        lo, hi = (lo + full if lo < 0 else lo), (hi + full if hi < 0 else min(hi, full))
        keep, off = [], 0
        for p, s in zip(x.pieces, sizes):
            if lo <= off and off + s <= hi:
                keep.append(p)
            elif off < hi and off + s > lo:
                keep = None
                break
            off += s
        if keep and step == 1:
            return keep[0] if len(keep) == 1 else Cat(tuple(keep), dim, x.node)
        raise c.unsupported("a slice that cuts into the concatenated pieces",
                            "Slice off whole concatenated columns ([..., :-1] after a sink column)")
    lo = 0 if start is None else start
    hi = full if end is None else end
    if step == 1 and lo == 0 and (isinstance(hi, int) and hi >= full or hi is not None and hi == full):
        return x
    raise c.unsupported("slicing a dimension (x[..., a:b])",
                        "Pass the slice as the input, or express the window as a mask with torch.where")


def _int(v):
    if isinstance(v, Scalar):
        return int(v.hint)
    return int(v)


@handles(aten.cat.default)
def _cat(c, node, xs, dim=0):
    xs = [c.operand(x) for x in xs]
    rank = len(xs[0].dims)
    return Cat(tuple(xs), dim % rank, node)


@handles(aten.repeat.default)
def _repeat(c, node, x, reps):
    raise c.unsupported("torch.repeat tiles a dimension: for KV heads, query head h would read KV head h % g, "
                        "which a cascade cannot subscript", "Repeat KV heads with repeat_interleave(r, dim=1), or "
                        "unsqueeze(2).expand(...).reshape(...), so that head h reads KV head h // r")


# -- constants and coordinates -----------------------------------------------------------
@handles(aten.scalar_tensor.default)
def _scalar_tensor(c, node, v, **_):
    return c.operand(v) if not isinstance(v, bool) else T(Expr.const(float(v)), (), True)


@handles(aten.full.default)
def _full(c, node, size, v, **kw):
    b = isinstance(v, bool) or kw.get("dtype") is torch.bool
    return T(c.operand(v).expr if not b else _bool_const(v), c.fresh_dims(shape_of(node), repeat=True), b)


def _bool_const(v) -> Expr:
    return Expr(Op.EQ, (Expr.const(0.0), Expr.const(0.0 if v else 1.0)))


@handles(aten.full_like.default, aten.zeros_like.default, aten.ones_like.default)
def _full_like(c, node, x, v=None, **kw):
    if node.target is aten.zeros_like.default:
        v = 0.0
    elif node.target is aten.ones_like.default:
        v = 1.0
    if isinstance(x, Cat):
        return Cat(tuple(T(c.operand(v).expr, p.dims) for p in x.pieces), x.dim, x.node)
    return T(c.operand(v).expr, x.dims)


@handles(aten.arange.start_step, aten.arange.default, aten.arange.start)
def _arange(c, node, *args, **kw):
    if node.target is aten.arange.default:
        start, step = 0, 1
    else:
        start = args[0]
        step = args[2] if len(args) > 2 else 1
    (atom,), = c.fresh_dims(shape_of(node))
    c.A.atoms[atom].repeat = False
    e = index(atom)
    if not (isinstance(step, int) and step == 1):
        e = Expr(Op.MUL, (c.operand(step).expr, e))
    if not (isinstance(start, int) and start == 0):
        e = Expr(Op.ADD, (c.operand(start).expr, e))
    return T(e, ((atom,),))


# -- elementwise --------------------------------------------------------------------------
def _binary(op):
    def fn(c, node, a, b, **kw):
        alpha = kw.get("alpha", 1)
        if alpha != 1:
            b = c.ew(Op.MUL, b, alpha)
        if op is Op.ADD:
            for x, m in ((a, b), (b, a)):
                masked = _additive_mask(c, x, m)
                if masked is not None:
                    return masked
        return c.ew(op, a, b)
    return fn


def _additive_mask(c, x, m):
    """``x + where(cond, 0, -inf)`` -> ``where(cond, x, -inf)`` (SDPA's decomposed masks): a plain
    mask the planner skips tiles for. Differs only where x is NaN or +inf at a hidden key (the
    addition gives NaN there, the mask -inf), as SDPA's fused kernels and FlexAttention do."""
    if not isinstance(m, T) or isinstance(x, Cat) or m.expr.op is not Op.WHERE:
        return None
    cond, t, f = m.expr.src
    zero, ninf = Expr.const(0.0), NEG_INF
    if t == zero and f == ninf:
        keep = cond
    elif t == ninf and f == zero:
        keep = Expr(Op.NOT, (cond,))
    else:
        return None
    xv = c.operand(x)
    dims = c.broadcast([xv, T(keep, m.dims, True)])
    return T(Expr(Op.WHERE, (keep, xv.expr, ninf)), dims)


for _t, _op in ((aten.add.Tensor, Op.ADD), (aten.add.Scalar, Op.ADD), (aten.sub.Tensor, Op.SUB),
                (aten.sub.Scalar, Op.SUB), (aten.mul.Tensor, Op.MUL), (aten.mul.Scalar, Op.MUL),
                (aten.div.Tensor, Op.DIV), (aten.div.Scalar, Op.DIV), (aten.maximum.default, Op.MAX),
                (aten.minimum.default, Op.MIN), (aten.remainder.Tensor, Op.MOD), (aten.remainder.Scalar, Op.MOD),
                (aten.floor_divide.default, Op.FLOORDIV)):
    HANDLERS[_t] = _binary(_op)


@handles(aten.div.Tensor_mode)
def _div_mode(c, node, a, b, rounding_mode=None):
    if rounding_mode == "floor":
        return c.ew(Op.FLOORDIV, a, b)
    raise c.unsupported(f"division with rounding_mode={rounding_mode!r}", "Use / or // (floor)")


@handles(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(c, node, a, b, alpha=1):
    return c.ew(Op.SUB, b, a if alpha == 1 else c.ew(Op.MUL, a, alpha))


@handles(aten.pow.Tensor_Scalar)
def _pow(c, node, a, p):
    if p == 2:
        return c.ew(Op.SQUARE, a)
    if p == 0.5:
        return c.ew(Op.SQRT, a)
    if p == -0.5:
        return c.ew(Op.RSQRT, a)
    return c.ew(Op.POW, a, p)


@handles(aten.reciprocal.default)
def _reciprocal(c, node, a):
    return c.ew(Op.DIV, 1.0, a)


def _unary(op):
    return lambda c, node, a: c.ew(op, a)


for _t, _op in ((aten.exp.default, Op.EXP), (aten.exp2.default, Op.EXP2), (aten.log.default, Op.LOG),
                (aten.log2.default, Op.LOG2), (aten.sqrt.default, Op.SQRT), (aten.rsqrt.default, Op.RSQRT),
                (aten.tanh.default, Op.TANH), (aten.sigmoid.default, Op.SIGMOID), (aten.relu.default, Op.RELU),
                (aten.abs.default, Op.ABS), (aten.sign.default, Op.SIGN), (aten.neg.default, Op.NEG)):
    HANDLERS[_t] = _unary(_op)


@handles(aten.softplus.default)
def _softplus(c, node, a, beta=1, threshold=20):
    if beta != 1:
        raise c.unsupported(f"softplus with beta={beta}", "Use softplus(beta * x) / beta")
    return c.ew(Op.SOFTPLUS, a)


@handles(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(c, node, a, lo=None, hi=None):
    if node.target is aten.clamp_max.default:
        lo, hi = None, lo
    out = a
    if lo is not None:
        out = c.ew(Op.MAX, out, lo)
    if hi is not None:
        out = c.ew(Op.MIN, out, hi)
    return out


def _compare(op):
    return lambda c, node, a, b: c.ew(op, a, b, boolean=True)


for _t, _op in ((aten.lt, Op.LT), (aten.le, Op.LE), (aten.gt, Op.GT), (aten.ge, Op.GE), (aten.eq, Op.EQ),
                (aten.ne, Op.NE)):
    HANDLERS[_t.Tensor] = HANDLERS[_t.Scalar] = _compare(_op)


def _logic(op):
    def fn(c, node, *args):
        vals = [_as_bool(c, a) for a in args]
        if op is Op.NOT:
            return T(negate(vals[0].expr), vals[0].dims, True)
        out = c.ew(op, *vals, boolean=True)
        a, b = out.expr.src
        for x, y in ((a, b), (b, a)):      # a constant operand (full(True) in SDPA's causal mask)
            if x.is_scalar() and not x.params():
                truth = _truth(x)
                if truth is not None:
                    keep = y if (truth if op is Op.AND else not truth) else x
                    return T(keep, out.dims, True)
        return out
    return fn


def _truth(e: Expr):
    """The value of a constant boolean expression (comparisons of constants), else None."""
    if e.op in _FLIP and all(s.op is Op.CONST for s in e.src):
        a, b = (s.arg for s in e.src)
        return {Op.LT: a < b, Op.LE: a <= b, Op.GT: a > b, Op.GE: a >= b, Op.EQ: a == b, Op.NE: a != b}[e.op]
    return None


def _as_bool(c, a):
    v = c.operand(a)
    if v.boolean:
        return v
    e = v.expr
    if e.op is Op.WHERE and e.src[1].op is Op.CONST and e.src[1].arg not in (0.0,) \
            and e.src[2] == Expr.const(0.0) and e.src[1].arg == e.src[1].arg:
        return T(e.src[0], v.dims, True)            # a mask made a float and back (triu(ones).bool())
    return T(Expr(Op.NE, (e, Expr.const(0.0))), v.dims, True)


for _t, _op in ((aten.logical_and.default, Op.AND), (aten.bitwise_and.Tensor, Op.AND),
                (aten.logical_or.default, Op.OR), (aten.bitwise_or.Tensor, Op.OR),
                (aten.logical_not.default, Op.NOT), (aten.bitwise_not.default, Op.NOT)):
    HANDLERS[_t] = _logic(_op)


@handles(aten.where.self)
def _where(c, node, cond, a, b):
    hit = _masked_row_guard(c, node)
    if hit is not None:
        return hit
    cond = _as_bool(c, cond)
    if _is_neg_inf(a) and not _is_neg_inf(b):       # masked_fill(~keep, -inf): where(keep, x, -inf)
        cond, a, b = T(negate(cond.expr), cond.dims, True), b, a
    return c.ew(Op.WHERE, cond, a, b)


def _is_neg_inf(v) -> bool:
    e = v.expr if isinstance(v, T) else Expr.const(float(v)) if isinstance(v, (int, float)) else None
    return e == NEG_INF


_FLIP = {Op.LT: Op.GE, Op.LE: Op.GT, Op.GT: Op.LE, Op.GE: Op.LT, Op.EQ: Op.NE, Op.NE: Op.EQ}


def negate(e: Expr) -> Expr:
    """``~e`` with the negation pushed into a comparison (``~(n <= m)`` is ``n > m``): masks read the
    way the zoo writes them."""
    if e.op is Op.NOT:
        return e.src[0]
    if e.op in _FLIP:
        return Expr(_FLIP[e.op], e.src)
    return Expr(Op.NOT, (e,))


def _masked_row_guard(c, node):
    """SDPA's ``where(~any(x != -inf, -1), 0, softmax(x))``: the softmax itself, because einattn
    gives a row whose every key is -inf the output 0 (0/0 = 0, docs/spec.md)."""
    cond, zero, soft = node.args
    if not all(isinstance(n, torch.fx.Node) for n in (cond, soft)) or soft.target is not aten._softmax.default:
        return None
    z = c.env.get(zero) if isinstance(zero, torch.fx.Node) else zero
    z = z.expr if isinstance(z, T) else Expr.const(float(z)) if isinstance(z, (int, float)) else None
    if z != Expr.const(0.0):
        return None
    n = cond
    if n.target not in (aten.logical_not.default, aten.bitwise_not.default):
        return None
    n = n.args[0]
    if n.target is not aten.any.dim:
        return None
    inner = n.args[0]
    if inner.target in (aten.logical_not.default, aten.bitwise_not.default):
        inner = inner.args[0]
        ok = inner.target is aten.eq.Scalar
    else:
        ok = inner.target is aten.ne.Scalar
    if not ok or inner.args[1] != -math.inf or inner.args[0] is not soft.args[0]:
        return None
    return c.env[soft]


# -- reductions and contractions ----------------------------------------------------------
@handles(aten._softmax.default)
def _softmax(c, node, x, dim, half=False):
    return c.reduce(x, [dim], False, "softmax")


@handles(aten._log_softmax.default)
def _log_softmax(c, node, x, dim, half=False):
    return c.reduce(x, [dim], False, "log_softmax")


@handles(aten.logsumexp.default)
def _logsumexp(c, node, x, dims, keepdim=False):
    return c.reduce(x, list(dims), keepdim, "logsumexp")


@handles(aten.amax.default, aten.amin.default)
def _amax(c, node, x, dims=(), keepdim=False):
    return c.reduce(x, list(dims), keepdim, "max" if node.target is aten.amax.default else "min")


@handles(aten.sum.dim_IntList, aten.sum.default)
def _sum(c, node, x, dims=None, keepdim=False, **_):
    return c.reduce(x, list(dims or []), keepdim, "sum")


@handles(aten.mean.dim)
def _mean(c, node, x, dims, keepdim=False, **_):
    out = c.reduce(x, list(dims), keepdim, "sum")
    rank = len(x.dims)
    count = None
    for d in dims:
        for a in x.dims[d % rank]:
            s = Scalar(c.size_expr(a), c.A.hint(a))
            count = s if count is None else Scalar(Expr(Op.MUL, (count.expr, s.expr)), count.hint * s.hint)
    return c.ew(Op.DIV, out, count)


@handles(aten.any.dim, aten.any.dims)
def _any(c, node, x, dims, keepdim=False):
    b = _as_bool(c, x)
    cnt = c.reduce(T(Expr(Op.WHERE, (b.expr, Expr.const(1.0), Expr.const(0.0))), b.dims),
                   [dims] if isinstance(dims, int) else list(dims), keepdim, "max")
    return c.ew(Op.GT, cnt, 0.0, boolean=True)


@handles(aten.bmm.default, aten.mm.default)
def _bmm(c, node, a, b):
    a, b = c.operand(a), c.operand(b)
    if node.target is aten.mm.default:
        ba, bb, (ma, ka), (kb, nb) = (), (), a.dims, b.dims
    else:
        (ba, ma, ka), (bb, kb, nb) = a.dims, b.dims
        c.unify(ba, bb)
    c.unify(ka, kb)
    used = c.used(a) | c.used(b)
    free = [x for g in (ba, ma, nb) for x in c.real(g, used)]
    red = [x for x in c.real(ka, used)]
    if not red:
        raise c.unsupported("a matrix product over a dimension neither operand varies along",
                            "Multiply by the size instead")
    stmts = {d.name for d in c.drafts}
    reads_stmt = any(e.op is Op.READ and e.arg[0] in stmts for v in (a, b) for e in v.expr.walk())
    nm = c.emit("O" if reads_stmt else "S", free, Reduce.SUM, Expr(Op.MUL, (a.expr, b.expr)))
    if reads_stmt and len(red) == 1:
        c.value_keys.append(red[0])
    return T(read(nm, free), (ba, ma, nb) if node.target is aten.bmm.default else (ma, nb))


# -- sizes: Python arithmetic on SymInts --------------------------------------------------
@handles(aten.sym_size.int)
def _sym_size(c, node, x, dim):
    g = x.dims[dim]
    e = None
    for a in g:
        s = c.size_expr(a)
        e = s if e is None else Expr(Op.MUL, (e, s))
    return Scalar(e if e is not None else Expr.const(1.0), c.ghint(g))


def _num(v):
    return v if isinstance(v, Scalar) else Scalar(Expr.const(float(v)), float(v))


def _sym_binary(op, fn):
    def h(c, node, a, b):
        a, b = _num(a), _num(b)
        return Scalar(Expr(op, (a.expr, b.expr)), fn(a.hint, b.hint))
    return h


for _t, _op, _fn in ((operator.mul, Op.MUL, operator.mul), (operator.add, Op.ADD, operator.add),
                     (operator.sub, Op.SUB, operator.sub), (operator.truediv, Op.DIV, operator.truediv),
                     (operator.floordiv, Op.FLOORDIV, operator.floordiv), (operator.pow, Op.POW, operator.pow),
                     (operator.mod, Op.MOD, operator.mod)):
    HANDLERS[_t] = _sym_binary(_op, _fn)


@handles(operator.neg)
def _sym_neg(c, node, a):
    a = _num(a)
    return Scalar(Expr(Op.NEG, (a.expr,)), -a.hint)


@handles(torch.sym_float, torch.sym_int, torch.sym_sqrt if hasattr(torch, "sym_sqrt") else operator.pos)
def _sym_float(c, node, a):
    if node.target is getattr(torch, "sym_sqrt", None):
        a = _num(a)
        return Scalar(Expr(Op.SQRT, (a.expr,)), math.sqrt(a.hint))
    return _num(a)


@handles(aten._assert_tensor_metadata.default, aten._assert_scalar.default,
         torch.ops.aten.sym_constrain_range_for_size.default)
def _ignore(c, node, *args, **kw):
    return None


SUPPORTED = ("einsum / matmul / @ / bmm with transpose or permute, softmax, log_softmax, logsumexp, "
             "sum / amax / amin / mean, exp, exp2, log, log2, sqrt, rsqrt, tanh, sigmoid, relu, softplus, "
             "abs, sign, clamp, maximum, minimum, + - * / // % **, comparisons, logical and/or/not, "
             "where / masked_fill, arange, tril / triu, full, unsqueeze / expand / reshape / view / "
             "repeat_interleave (GQA), torch.cat of a sink column, scaled_dot_product_attention")

