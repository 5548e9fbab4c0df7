"""Core ATen graph (from ``torch.export``) -> einsum cascade.

Each node becomes a value (``values.py``): elementwise ops compose expressions, reductions and
``bmm`` emit statements, ``view``/``permute``/``expand`` only rearrange atom groups. A softmax
over the keys emits the zoo's statements (``Sm``, ``M``, ``P``, ``L``); ``cat`` of a sink column is
a piecewise value whose softmax folds the column into the max and the denominator. Two peepholes
keep SDPA's decomposition at one pass: an additive ``where(c, 0, -inf)`` mask becomes
``where(c, x, -inf)``, and the fully-masked-row guard ``where(~any(x != -inf), 0, softmax(x))`` is
the softmax itself (einattn defines such rows as 0 already, docs/spec.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import sympy
import torch

from einattn.ir import Expr, Loc, Op, Reduce, UnsupportedError

from .values import Atoms, Cat, Scalar, T, atom_of, index, read, sym_expr

aten = torch.ops.aten
NEG_INF = Expr.const(-math.inf)


@dataclass
class Draft:
    """A statement before atoms get their final names."""
    name: str
    atoms: tuple[int, ...]
    reduce: Reduce
    expr: Expr
    loc: Loc | None


def size_of(s) -> tuple[object, int]:
    """(sympy expression, hint) of one dimension size of a fake tensor."""
    if isinstance(s, int):
        return sympy.Integer(s), s
    node = s.node
    return node.expr, int(node.hint if node.hint is not None else node.expr)


def source_line(node, file: str | None) -> tuple[Loc | None, str]:
    """(file:line, code) of the innermost frame of ``file`` in a graph node's stack trace."""
    trace = (node.meta.get("stack_trace") or "") if node is not None else ""
    lines = trace.strip().splitlines()
    best = None
    for i, ln in enumerate(lines):
        ln = ln.strip()
        if ln.startswith("File \""):
            f = ln.split("\"")[1]
            if file is None or f == file:
                try:
                    no = int(ln.split("line ")[1].split(",")[0])
                except (IndexError, ValueError):
                    continue
                code = lines[i + 1].strip() if i + 1 < len(lines) else ""
                best = (Loc(f, no, 0), code)
    return best if best is not None else (None, "")


def unsupported_at(node, file: str | None, what: str, fix: str) -> UnsupportedError:
    loc, code = source_line(node, file)
    place = f"{loc.file}:{loc.line}: `{code}`: " if loc is not None else ""
    return UnsupportedError(f"{place}{what}. {fix}")


class Converter:
    """Walks an exported program's graph once; ``run()`` returns (drafts, outputs)."""

    def __init__(self, gm: torch.fx.GraphModule, inputs: list[str], source_file: str | None):
        self.gm, self.input_names, self.source_file = gm, inputs, source_file
        self.A = Atoms()
        self.env: dict = {}
        self.drafts: list[Draft] = []
        self.params: dict[Expr, str] = {}        # param-space expression -> param name
        self.symbols: dict = {}                  # sympy symbol -> an atom of that size
        self.input_dims: dict[str, tuple[int, ...]] = {}
        self.key: int | None = None              # the atom the first softmax / row reduction runs over
        self.softmaxes: list = []                # (atom, node, kind): every softmax must run over the key
        self.value_keys: list[int] = []          # atoms summed by contractions of computed weights (P.V)
        self.node = None

    # -- errors and places ------------------------------------------------------------
    def where_(self, node=None) -> tuple[Loc | None, str]:
        return source_line(node if node is not None else self.node, self.source_file)

    def unsupported(self, what: str, fix: str, node=None) -> UnsupportedError:
        return unsupported_at(node if node is not None else self.node, self.source_file, what, fix)

    # -- atoms ---------------------------------------------------------------------------
    def fresh_dims(self, shape, repeat: bool = False) -> tuple[tuple[int, ...], ...]:
        out = []
        for s in shape:
            size, hint = size_of(s)
            out.append((self.A.new(size, hint, repeat or hint == 1),))
        return tuple(out)

    def ghint(self, g) -> int:
        return math.prod(self.A.hint(a) for a in g)

    def real(self, g, used: set[int]) -> list[int]:
        return [self.A.find(a) for a in g if self.A.find(a) in used]

    def used(self, v: T) -> set[int]:
        """The atoms ``v`` varies along (dropped size-1 atoms do not count: their coordinate is 0)."""
        return {self.A.find(a) for a in v.used()} - self.A.dropped

    def unify(self, ga, gb) -> None:
        """Line two dim groups up: equal sizes unify; a size-1 atom facing a larger one broadcasts
        (dropped from its input: MQA's single KV head); one atom facing several is :meth:`group`."""
        A = self.A
        ga, gb = list(ga), list(gb)
        i = j = 0
        while i < len(ga) or j < len(gb):
            x = ga[i] if i < len(ga) else None
            y = gb[j] if j < len(gb) else None
            if x is not None and y is not None and A.hint(x) == A.hint(y):
                A.union(x, y)
                i, j = i + 1, j + 1
                continue
            if x is not None and A.hint(x) == 1:
                A.dropped.add(A.find(x))
                i += 1
                continue
            if y is not None and A.hint(y) == 1:
                A.dropped.add(A.find(y))
                j += 1
                continue
            if x is None or y is None:
                raise self.unsupported("two dimensions of different sizes meet here",
                                       "Write the function so that matching dimensions have equal sizes")
            one, many, k = (x, gb, j) if A.hint(x) > A.hint(y) else (y, ga, i)
            group, p = [], 1
            while k < len(many) and p < A.hint(one):
                if A.hint(many[k]) != 1:
                    group.append(many[k])
                    p *= A.hint(many[k])
                else:
                    A.dropped.add(A.find(many[k]))
                k += 1
            if p != A.hint(one):
                raise self.unsupported("two dimensions of different sizes meet here",
                                       "Write the function so that matching dimensions have equal sizes")
            self.group(one, group)
            if many is gb:
                i, j = i + 1, k
            else:
                i, j = k, j + 1

    def group(self, one: int, parts: list[int]) -> None:
        """One dim against several (a head dim against KV heads x repeats): grouped-query reads."""
        A = self.A
        reps = [p for p in parts if A.of(p).repeat]
        if len(parts) == 2 and A.of(parts[1]).repeat and not A.of(parts[0]).repeat and not A.of(one).repeat:
            for y, (x, _) in list(A.grouped.items()):   # K and V heads grouped alike are one index
                if A.find(x) == A.find(one) and A.hint(y) == A.hint(parts[0]):
                    A.union(y, parts[0])
                    A.grouped[A.find(y)] = (one, parts[1])
                    return
            self.A.grouped[A.find(parts[0])] = (one, parts[1])
            return
        if len(parts) == 2 and A.of(parts[0]).repeat and not A.of(parts[1]).repeat:
            raise self.unsupported(
                "heads repeated as tiles (torch.repeat or expand before the head dim): query head h would "
                "read KV head h % g, which a cascade cannot subscript",
                "Repeat KV heads with repeat_interleave(r, dim=1), or unsqueeze(2).expand(...).reshape(...), "
                "so that head h reads KV head h // r")
        raise self.unsupported(
            "one dimension is split into several (" + " x ".join(str(A.hint(p)) for p in parts)
            + f" = {A.hint(one)}" + (", with repeats" if reps else "") + "): the cascade IR cannot split a dimension",
            "Reshape inputs before the call so that each index (batch, head, position, feature) is a dimension "
            "of its own, e.g. q.view(b, n, h, d).transpose(1, 2) for packed heads [b, n, h*d]")

    # -- values --------------------------------------------------------------------------
    def param(self, s: Scalar) -> Expr:
        if s.expr.op is Op.CONST:
            return s.expr
        pname = self.params.get(s.expr)
        if pname is None:
            pname = self.params[s.expr] = f"_p{len(self.params)}"
        return Expr(Op.PARAM, (), pname)

    def operand(self, v) -> T:
        if isinstance(v, T):
            return v
        if isinstance(v, Scalar):
            return T(self.param(v), ())
        if isinstance(v, bool):
            return T(Expr.const(float(v)), (), True)
        if isinstance(v, (int, float)):
            return T(Expr.const(float(v)), ())
        if isinstance(v, Cat):
            raise self.unsupported("a concatenated tensor used here", "Only softmax, logsumexp, amax, sum, "
                                   "elementwise ops and slicing off the concatenated columns are supported on "
                                   "torch.cat results (a sink column beside the scores)")
        raise self.unsupported(f"an operand of type {type(v).__name__}", "Pass tensors or numbers")

    def broadcast(self, vals: list[T]) -> tuple[tuple[int, ...], ...]:
        rank = max((len(v.dims) for v in vals), default=0)
        out = []
        for pos in range(-rank, 0):
            groups = [(v, v.dims[pos]) for v in vals if len(v.dims) >= -pos]
            big = [(v, g) for v, g in groups if self.ghint(g) != 1]
            if not big:
                g0 = groups[0][1]
                for _, g in groups[1:]:
                    self.unify(g0, g)
                out.append(g0)
                continue
            g0 = big[0][1]
            for _, g in big[1:]:
                self.unify(g0, g)
            for v, g in groups:
                if self.ghint(g) == 1:
                    for a in g:
                        if self.A.find(a) in self.used(v):
                            self.A.dropped.add(self.A.find(a))
            out.append(g0)
        return tuple(out)

    def ew(self, op: Op, *args, boolean: bool = False):
        cats = [a for a in args if isinstance(a, Cat)]
        if cats:
            return self.ew_cat(op, args, boolean)
        vals = [self.operand(a) for a in args]
        dims = self.broadcast(vals)
        return T(Expr(op, tuple(v.expr for v in vals)), dims, boolean)

    def ew_cat(self, op, args, boolean):
        c = next(a for a in args if isinstance(a, Cat))
        rank = len(c.dims)
        pieces = []
        for k, piece in enumerate(c.pieces):
            sub = []
            for a in args:
                if isinstance(a, Cat):
                    if a.dim != c.dim or len(a.pieces) != len(c.pieces):
                        raise self.unsupported("two concatenated tensors combined", "Combine before torch.cat")
                    sub.append(a.pieces[k])
                else:
                    v = self.operand(a)
                    pos = c.dim - rank
                    if len(v.dims) >= -pos and self.ghint(v.dims[pos]) != 1:
                        raise self.unsupported("an operand that varies along the concatenated dimension",
                                               "Apply it to the pieces before torch.cat")
                    sub.append(v)
            pieces.append(self.ew(op, *sub, boolean=boolean))
        return Cat(tuple(pieces), c.dim, c.node)

    def emit(self, prefix: str, atoms, reduce: Reduce, expr: Expr) -> str:
        if not atoms:
            raise self.unsupported("a value with no index left (a reduction to one number, or a query "
                                   "without a position dim)", "Keep the query positions as a dimension: "
                                   "q[..., m, d], one row per query")
        taken = {d.name for d in self.drafts}
        nm, k = prefix, 1
        while nm in taken:
            k += 1
            nm = f"{prefix}{k}"
        loc, _ = self.where_()
        self.drafts.append(Draft(nm, tuple(self.A.find(a) for a in atoms), reduce, expr, loc))
        return nm

    def materialize(self, v: T, prefix: str) -> T:
        used = self.used(v)
        atoms = [a for g in v.dims for a in self.real(g, used)]
        e = v.expr
        if e.op is Op.READ and e.arg[0] in {d.name for d in self.drafts} \
                and [self.A.find(atom_of(s.index)) for s in e.arg[1]] == atoms:
            return v
        if len(set(atoms)) != len(used):
            raise self.unsupported("a value that depends on an index it has no dimension for",
                                   "Keep every index of an intermediate tensor as a dimension")
        nm = self.emit(prefix, atoms, Reduce.SUM, e)
        return T(read(nm, atoms), v.dims, v.boolean)

    def reduce(self, v, dims: list[int], keepdim: bool, kind: str):
        """``kind``: sum, max, min, softmax, log_softmax, logsumexp."""
        if isinstance(v, Cat):
            return self.reduce_cat(v, dims, keepdim, kind)
        rank = len(v.dims)
        dims = sorted(d % rank for d in dims) if dims else list(range(rank))
        used = self.used(v)
        red = [a for d in dims for a in self.real(v.dims[d], used)]
        reps = [a for d in dims for a in v.dims[d] if self.A.find(a) not in used and self.A.hint(a) != 1]
        if kind in ("softmax", "log_softmax"):
            if len(red) != 1 or reps:
                raise self.unsupported(f"{kind} over a dimension the scores do not vary along, or over "
                                       "several", "Take the softmax over the key dimension of the scores")
            self.softmaxes.append((red[0], self.node, kind))
            if self.key is None:
                self.key = red[0]
        elif kind == "logsumexp" and self.key is None and len(red) == 1:
            self.key = red[0]
        keep = tuple(g for d, g in enumerate(v.dims) if d not in dims)
        out_dims = v.dims if kind in ("softmax", "log_softmax") else self.reduced_dims(v.dims, dims, keepdim)
        rows = [a for g in keep for a in self.real(g, used)]
        e = v.expr
        if not red:
            if kind == "sum" and reps:
                for a in reps:
                    e = Expr(Op.MUL, (e, self.param(Scalar(self.size_expr(a), self.A.hint(a)))))
            if kind in ("softmax", "log_softmax", "logsumexp"):
                raise self.unsupported(f"{kind} over a dimension of size 1", "Reduce over the keys")
            return T(e, out_dims, v.boolean)
        if kind == "sum":
            nm = self.emit("R", rows, Reduce.SUM, e)
            return T(read(nm, rows), out_dims)
        if kind in ("max", "min"):
            nm = self.emit("M", rows, Reduce.MAX if kind == "max" else Reduce.MIN, e)
            return T(read(nm, rows), out_dims)
        x = self.materialize(v, "Sm") if e.op is not Op.READ else v
        xatoms = [a for g in v.dims for a in self.real(g, used)]
        m = self.emit("M", rows, Reduce.MAX, x.expr)
        mr = read(m, rows)
        if kind == "softmax":
            p = self.emit("P", xatoms, Reduce.SUM, Expr(Op.EXP, (Expr(Op.SUB, (x.expr, mr)),)))
            ls = self.emit("L", rows, Reduce.SUM, read(p, xatoms))
            return T(Expr(Op.DIV, (read(p, xatoms), read(ls, rows))), out_dims)
        ls = self.emit("L", rows, Reduce.SUM, Expr(Op.EXP, (Expr(Op.SUB, (x.expr, mr)),)))
        lse = Expr(Op.ADD, (mr, Expr(Op.LOG, (read(ls, rows),))))
        if kind == "logsumexp":
            return T(lse, out_dims)
        return T(Expr(Op.SUB, (x.expr, lse)), out_dims)

    def reduced_dims(self, dims, reduced, keepdim: bool):
        """The dims after reducing ``reduced``: dropped, or size-1 broadcast dims with ``keepdim``."""
        if not keepdim:
            return tuple(g for d, g in enumerate(dims) if d not in reduced)
        return tuple(g if d not in reduced else (self.A.new(sympy.Integer(1), 1, True),) for d, g in enumerate(dims))

    def size_expr(self, a: int) -> Expr:
        at = self.A.of(a)
        return sym_expr(at.size, self.symbols) if at.repeat else index(self.A.find(a))

    def reduce_cat(self, c: Cat, dims, keepdim, kind):
        rank = len(c.dims)
        dims = [d % rank for d in dims]
        if dims != [c.dim]:
            raise self.unsupported("a reduction of a concatenated tensor over other dimensions",
                                   "Reduce over the concatenated (key) dimension only")
        main = [p for p in c.pieces if self.ghint(p.dims[c.dim]) != 1]
        cols = [p for p in c.pieces if self.ghint(p.dims[c.dim]) == 1]
        if len(main) != 1:
            raise self.unsupported("torch.cat of several key blocks", "Concatenate single columns (sinks) only",
                                   c.node)
        if kind in ("sum", "max", "min"):
            out = self.reduce(main[0], dims, keepdim, kind)
            fn = {"sum": Op.ADD, "max": Op.MAX, "min": Op.MIN}[kind]
            for col in cols:
                out = self.ew(fn, out, self.reduce(col, dims, keepdim, "sum"))
            return out
        x = main[0]
        used = self.used(x)
        red = [a for a in self.real(x.dims[c.dim], used)]
        if len(red) != 1:
            raise self.unsupported(f"{kind} over a dimension the scores do not vary along", "Reduce over the keys")
        self.softmaxes.append((red[0], self.node, kind))
        if self.key is None:
            self.key = red[0]
        x = self.materialize(x, "S") if x.expr.op is not Op.READ else x
        keep = [g for d, g in enumerate(x.dims) if d != c.dim]
        rows = [a for g in keep for a in self.real(g, used)]
        xatoms = [a for g in x.dims for a in self.real(g, used)]
        m0 = read(self.emit("M", rows, Reduce.MAX, x.expr), rows)
        colx = []
        for col in cols:
            squeezed = T(col.expr, tuple(g for d, g in enumerate(col.dims) if d != c.dim))
            self.broadcast([T(m0, tuple(keep)), squeezed])
            colx.append(col.expr)
        mexpr = m0
        for e in colx:
            mexpr = Expr(Op.MAX, (mexpr, e))
        mr = read(self.emit("M", rows, Reduce.SUM, mexpr), rows)
        shifted = Expr(Op.EXP, (Expr(Op.SUB, (x.expr, mr)),))
        if kind == "softmax":
            p = self.emit("P", xatoms, Reduce.SUM, shifted)
            l0 = read(self.emit("L", rows, Reduce.SUM, read(p, xatoms)), rows)
        else:
            p = None
            l0 = read(self.emit("L", rows, Reduce.SUM, shifted), rows)
        lexpr = l0
        for e in colx:
            lexpr = Expr(Op.ADD, (lexpr, Expr(Op.EXP, (Expr(Op.SUB, (e, mr)),))))
        lr = read(self.emit("L", rows, Reduce.SUM, lexpr), rows)
        lse = Expr(Op.ADD, (mr, Expr(Op.LOG, (lr,))))
        if kind == "logsumexp":
            return T(lse, self.reduced_dims(c.dims, [c.dim], keepdim))
        if kind == "softmax":
            pieces = [T(Expr(Op.DIV, (read(p, xatoms), lr)), x.dims) if q is main[0] else
                      T(Expr(Op.DIV, (Expr(Op.EXP, (Expr(Op.SUB, (q.expr, mr)),)), lr)), q.dims)
                      for q in c.pieces]
        else:
            pieces = [T(Expr(Op.SUB, (q.expr, lse)), q.dims) for q in c.pieces]
        return Cat(tuple(pieces), c.dim, c.node)
