"""Reverse-mode autodiff on the einsum cascade: the backward cascade of a forward one.

For a statement ``Y[I_Y] = sum_R f(.., X[s], ..)`` every read ``X[s]`` of a tensor
that needs a gradient gets one *contribution* statement,
``dX_k[s] = sum dY[I_Y] * df/dX[s]`` over every index of ``I_Y + R`` that ``s`` does
not carry: a contraction's gradient is a contraction with the index lists swapped
(``dK[n,d] = sum_m dS[m,n] * Q[m,d] * scale``), a broadcast becomes a sum and a sum a
broadcast. ``dX`` is the sum of its contributions (plus the incoming gradient of an
output). Rules and conventions per function: ``compiler/derivative.py``.

Three choices keep the backward a cascade the same kernels can run:
- **Stop-gradient** (``compiler/stopgrad.py``): shift-invariant stabilisers (softmax's
  row max) get no gradient at all.
- **Factors outside the sum**: when the read sits in a factor ``F`` of a product that
  does not carry the reduced indices (``O = sum_n P V / L``: ``F = L``), its gradient is
  ``dY * (+-Y / F) * dF`` with no sum over ``R``: ``dL = -sum_e dO * O / L``, a row term,
  not a sum over ``[m, n, e]``.
- **Save, recompute the rest**: forward values the backward reads that carry no key
  index but were computed from the keys (outputs, row maxima and sums such as ``M``,
  ``L``) are *saved*: the forward kernel also outputs them, O(rows) memory. Everything
  else (every ``[m, n]`` tile, statistics of the inputs) is recomputed.

A max/min reduction that is not a stabiliser routes its gradient to the coordinates
that attain it, split evenly between ties (``torch.amax``'s convention).
"""
from __future__ import annotations

from dataclasses import dataclass

from einattn.ir import (Cascade, Expr, Loc, Op, ParamDecl, Reduce, SpecError, Stmt, Sub, TensorDecl,
                        UnsupportedError, verify)
from einattn.ir import product_factors

from .derivative import ONE, ZERO, add, derivative, mul, safe_div, sub, where
from .stopgrad import stabilisers


@dataclass(frozen=True)
class Backward:
    """The derived backward of a forward cascade.

    Attributes:
        forward: the forward cascade differentiated (``normalized``: the same values).
        cascade: the backward cascade. Inputs: the forward's inputs, then the saved forward
            values, then one incoming gradient per forward output; outputs: the gradients.
        wrt: the forward inputs differentiated, in declaration order.
        grads: forward input -> the backward outputs whose sum is its gradient: one, or one per
            index naming of its reads (``C[b,h,t]`` read as ``C[b,h,m]`` and ``C[b,h,n]``); absent
            when no output depends on it (the gradient is zero).
        incoming: forward output -> the backward input holding its incoming gradient.
        saved: forward statements the training forward also outputs.
        cut: stabilisers given no gradient (stop-gradient).
        routed: max/min reductions whose gradient goes to the coordinates attaining them.
    """
    forward: Cascade
    cascade: Cascade
    wrt: tuple[str, ...]
    grads: dict
    incoming: dict
    saved: tuple[str, ...]
    cut: tuple[str, ...]
    routed: tuple[str, ...] = ()

    def training_forward(self) -> Cascade:
        """The forward cascade with the saved values appended to its outputs."""
        c = self.forward
        extra = tuple(s for s in self.saved if s not in c.outputs)
        return Cascade(c.inputs, c.params, c.stmts, c.outputs + extra, c.key, c.name, c.doc, c.file)

    def __str__(self) -> str:
        lines = [f"backward of {self.forward.name} with respect to {', '.join(self.wrt)}",
                 f"stop-gradient (shift-invariant stabilisers): {', '.join(self.cut) or '(none)'}",
                 f"saved by the forward: {', '.join(self.saved) or '(nothing)'}",
                 "incoming gradients: " + ", ".join(f"{g} (of {o})" for o, g in self.incoming.items()),
                 "cascade:"]
        lines += [f"  {s}" for s in self.cascade.stmts]
        lines.append("gradients: " + ", ".join(f"{x} -> {' + '.join(self.grads.get(x, ('zero',)))}"
                                               for x in self.wrt))
        return "\n".join(lines)


def _read(name: str, dims) -> Expr:
    return Expr.read(name, tuple(Sub(i) for i in dims))


class _Names:
    def __init__(self, c: Cascade):
        self.taken = {t.name for t in c.inputs} | {p.name for p in c.params} | {s.name for s in c.stmts} \
            | set(c.index_names)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def _factor_rule(s: Stmt, r: Expr) -> Expr | None:
    """d Y / d r without the sum over R, when every occurrence of ``r`` is inside factors of
    the product that do not carry R: ``sum_f (+-Y / f) * df / dr``."""
    if not s.reduced or s.reduce is not Reduce.SUM:
        return None
    num, den = product_factors(s.expr)
    hits = [(f, 1.0) for f in num if r in set(f.walk())] + [(f, -1.0) for f in den if r in set(f.walk())]
    red = set(s.reduced)
    if not hits or any(set(f.indices()) & red for f, _ in hits):
        return None
    y = _read(s.name, s.indices)
    out = ZERO
    for f, sign in hits:
        term = mul(safe_div(y, f), derivative(f, r))
        out = add(out, term) if sign > 0 else sub(out, term)
    return out


def _streamed(c: Cascade) -> set[str]:
    """Statements computed from the keys (they carry the key index or read such a statement)."""
    out: set[str] = set()
    for s in c.stmts:
        if c.key in s.all_indices or set(s.expr.reads()) & out:
            out.add(s.name)
    return out


def normalized(c: Cascade) -> Cascade:
    """``c`` after the normalising rewrites of the pipeline (those before ``defer_normalization``):
    value operands named (``P * (V1 + V2)`` reads ``O_v = V1 + V2``), value reads pulled out of
    ``where``, sums of contractions split. Differentiated in this form, a value operand's
    gradient is one value contraction and its terms' gradients rows of it, not a score
    contraction over an expression the kernels cannot tile."""
    from .rewrites import PIPELINE
    for name, fn in PIPELINE:
        if name == "defer_normalization":
            break
        c = fn(c)
    return c


def derive(c: Cascade, wrt: tuple[str, ...] | None = None) -> Backward:
    """The backward of ``c`` (its :func:`normalized` form) with respect to the inputs ``wrt``
    (default: all of them).

    Raises UnsupportedError for a read that repeats an index (``X[i, i]``) or a function
    without a derivative rule.
    """
    if c.selects:
        raise UnsupportedError(f"{c.name} selects key blocks (spec v1.1): the backward of a block-sparse cascade "
                               f"is not built yet (its selections have no gradient, and its dq and dkv kernels "
                               f"would visit every key tile)")
    names = [t.name for t in c.inputs]
    unknown = [x for x in wrt or () if x not in names]
    if unknown:
        raise SpecError(f"cannot differentiate with respect to '{unknown[0]}': not an input of '{c.name}'",
                        loc=Loc(c.file), expected="one of: " + ", ".join(names))
    wrt = tuple(names) if wrt is None else tuple(x for x in names if x in set(wrt))
    c = normalized(c)
    cut = stabilisers(c)
    fresh = _Names(c)
    active = set(wrt)
    for s in c.stmts:
        if s.name not in cut and set(s.expr.reads()) & active:
            active.add(s.name)
    live = set(c.outputs)
    for s in reversed(c.stmts):
        if s.name in live:
            live.update(s.expr.reads())
    need = active & live

    incoming = {o: fresh("d" + o) for o in c.outputs if o in need}
    parts: dict[str, list[str]] = {o: [g] for o, g in incoming.items()}
    input_parts: dict[str, dict[tuple, list[str]]] = {}
    routed: list[str] = []
    stmts: list[Stmt] = []
    params: list[ParamDecl] = []

    def gather(x: str, got: list[str], dims) -> str:
        """The name holding the sum of the contributions ``got`` (one is used as it is)."""
        if len(got) == 1:
            return got[0]
        name = fresh("d" + x)
        e = _read(got[0], dims)
        for g in got[1:]:
            e = add(e, _read(g, dims))
        stmts.append(Stmt(name, tuple(dims), Reduce.SUM, e))
        return name

    def size_of(i: str) -> Expr:
        p = next((p for p in params if p.name == f"size_{i}"), None)
        if p is None:
            p = ParamDecl(fresh(f"size_{i}"), Expr(Op.INDEX, (), i))
            params.append(p)
        return Expr(Op.PARAM, (), p.name)

    for s in reversed(c.stmts):
        if s.name not in need or s.name not in parts:
            continue
        dy = _read(gather(s.name, parts[s.name], s.indices), s.indices)
        ties = None
        for r in dict.fromkeys(e for e in s.expr.walk() if e.op is Op.READ and e.arg[0] in need):
            x, subs = r.arg
            if len({u.index for u in subs}) != len(subs):
                raise UnsupportedError(f"{s.loc or c.file}: '{r}' repeats an index: einattn cannot derive "
                                       f"the gradient of a diagonal read")
            w = _factor_rule(s, r)
            domain = set(s.indices) if w is not None else set(s.all_indices)
            if w is None:
                w = derivative(s.expr, r)
                if not s.reduced:       # exp's derivative is exp itself: read P, do not recompute it
                    y = _read(s.name, s.indices)
                    w = w.replace(lambda e: y if e == s.expr else None)
                if s.reduced and s.reduce is not Reduce.SUM:     # the coordinates that attain the max
                    hit = where(Expr(Op.EQ, (s.expr, _read(s.name, s.indices))), ONE, ZERO)
                    if ties is None:
                        routed.append(s.name)
                        ties = fresh(s.name + "_ties")
                        stmts.append(Stmt(ties, s.indices, Reduce.SUM, hit))
                    w = mul(w, Expr(Op.DIV, (hit, _read(ties, s.indices))))
            e = mul(dy, w)
            left = tuple(u.index for u in subs)
            for i in sorted(domain - set(left) - set(e.indices())):
                e = mul(e, size_of(i))         # summed over an index nothing in the term carries
            if e.op is Op.CONST and e.arg == 0.0:
                continue
            name = fresh(f"d{x}_{s.name}")
            stmts.append(Stmt(name, left, Reduce.SUM, e, s.loc))
            if any(u.div is not None for u in subs):
                name = _ungroup(c, s, x, subs, name, fresh, stmts)
            if c.input(x) is None:
                parts.setdefault(x, []).append(name)
            else:           # per index naming: C[b,h,m] and C[b,h,n] of one C[b,h,t] sum in torch
                dims = next(st.indices for st in reversed(stmts) if st.name == name)
                input_parts.setdefault(x, {}).setdefault(dims, []).append(name)

    grads = {x: tuple(gather(x, got, dims) for dims, got in input_parts[x].items())
             for x in wrt if x in input_parts}

    # only what a gradient needs (a contribution through a zero derivative leaves dead sums)
    live_b = {g for gs in grads.values() for g in gs}
    for st in reversed(stmts):
        if st.name in live_b:
            live_b.update(st.expr.reads())
    stmts = [st for st in stmts if st.name in live_b]

    saved, recompute = _save_set(c, stmts)
    inputs = c.inputs + tuple(TensorDecl(y, c.stmt(y).indices) for y in saved) + \
        tuple(TensorDecl(g, c.stmt(o).indices) for o, g in incoming.items())
    body = tuple(s for s in c.stmts if s.name in recompute) + tuple(stmts)
    outputs = tuple(g for x in wrt for g in grads.get(x, ()))
    bw = Cascade(inputs, c.params + tuple(params), body, outputs, c.key, f"{c.name}_backward", c.doc, c.file)
    if outputs:
        verify(bw)
    return Backward(c, bw, wrt, grads, incoming, tuple(saved), cut, tuple(routed))


def _save_set(c: Cascade, stmts: list[Stmt]) -> tuple[list[str], set[str]]:
    """The forward values the backward statements read: saved (values of the key loop that carry
    no key index: outputs, row maxima and sums), in cascade order, or recomputed (the rest, with
    what they read in turn)."""
    streamed = _streamed(c)
    saved, recompute = set(), set()
    todo = [r for st in stmts for r in st.expr.reads() if c.stmt(r) is not None]
    while todo:
        y = todo.pop()
        if y in saved or y in recompute:
            continue
        if c.key not in c.stmt(y).indices and y in streamed:
            saved.add(y)
        else:
            recompute.add(y)
            todo += [r for r in c.stmt(y).expr.reads() if c.stmt(r) is not None]
    return [s.name for s in c.stmts if s.name in saved], recompute


def _ungroup(c: Cascade, s: Stmt, x: str, subs, name: str, fresh, stmts: list) -> str:
    """Sum a contribution over the group a ``h // r`` subscript reads: ``dK[b, g, ..] =
    sum_h dK_h[b, h, ..] * (h // r == g)`` (GQA: each KV head gets its query heads' sum)."""
    decl = c.input(x).indices
    plain = {u.index for u in subs if u.div is None}
    left, cond = [], None
    for u, dim in zip(subs, decl):
        if u.div is None:
            left.append(u.index)
            continue
        if dim in plain or dim == u.index:
            raise UnsupportedError(f"{s.loc or c.file}: cannot derive the gradient of '{x}' read as "
                                   f"'{x}[{', '.join(map(str, subs))}]': its dim name '{dim}' is also a "
                                   f"subscript there; rename the dim in 'inputs:'")
        left.append(dim)
        eq = Expr(Op.EQ, (Expr(Op.FLOORDIV, (Expr(Op.INDEX, (), u.index), Expr(Op.PARAM, (), u.div))),
                          Expr(Op.INDEX, (), dim)))
        cond = eq if cond is None else Expr(Op.AND, (cond, eq))
    out = fresh(f"d{x}_{s.name}_group")
    stmts.append(Stmt(out, tuple(left), Reduce.SUM,
                      mul(_read(name, tuple(u.index for u in subs)), where(cond, ONE, ZERO)), s.loc))
    return out
