"""Converted drafts -> a Cascade with structural names, and the call adapters around it.

Index names come from roles, not from shape symbols: the key the first softmax (or row reduction,
or value contraction) runs over is ``n``; the score contraction's summed index ``d``; KV heads read
as ``h // r`` are ``g``; the score's other indices are batch-like (``b``, ``h``: also carried by a
key-side input) or query positions (``m``); the outputs' remaining indices ``e``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from einattn.ir import Cascade, Expr, Loc, Op, ParamDecl, Reduce, Stmt, Sub, TensorDecl, UnsupportedError

from .convert import Converter, Draft
from .values import Cat, T, atom_of


@dataclass(frozen=True)
class InputPlan:
    """How one tensor argument of the call becomes one kernel input."""
    arg: int                    # position among the graph's inputs (Traced.sources says which argument)
    name: str
    keep: tuple[int, ...]       # dims kept (the others are size-1 broadcast dims, dropped by a view)


@dataclass(frozen=True)
class OutputPlan:
    stmt: str
    counts: tuple[int, ...]     # per returned dim, how many kernel-output dims it merges (0: a size-1 dim)


def finish(c: Converter, outputs, arg_names: list[str], file: str, nodes=()):
    """(cascade, input plans, output plans) of a converted graph (``nodes``: the output nodes)."""
    outs = []
    for i, v in enumerate(outputs):
        c.node = nodes[i] if i < len(nodes) else c.node
        if isinstance(v, Cat) or not isinstance(v, T):
            raise c.unsupported("an output that is not one attention tensor (a torch.cat result or a "
                                "non-tensor)", "Return tensors computed from the inputs")
        if v.boolean:
            raise c.unsupported("a boolean output", "Return floating-point tensors")
        used = c.used(v)
        atoms = [a for g in v.dims for a in c.real(g, used)]
        if len(set(atoms)) != len(atoms) or set(atoms) != used:
            raise c.unsupported("an output with an index it has no dimension for (or two dims on one index)",
                                "Return tensors whose every index is one dimension")
        drafts = {d.name: d for d in c.drafts}
        e = v.expr
        if e.op is Op.READ and e.arg[0] in drafts and [c.A.find(atom_of(s.index)) for s in e.arg[1]] == atoms \
                and list(drafts[e.arg[0]].atoms) == atoms and e.arg[0] not in [o.stmt for o in outs]:
            nm = e.arg[0]
        else:
            nm = c.emit("O", atoms, Reduce.SUM, e)
        outs.append(OutputPlan(nm, tuple(len(c.real(g, used)) for g in v.dims)))
    if c.value_keys:                   # the key is what the value contraction sums over (P.V)
        c.key = c.value_keys[-1]
    for atom, node, kind in c.softmaxes:
        if c.A.find(atom) != c.A.find(c.key):
            raise c.unsupported(f"a {kind} over a dimension other than the keys (what the value "
                                f"contraction sums, or the first softmax's)",
                                "einattn streams one key dimension; a softmax over the query or feature "
                                "dimension cannot be planned", node)
    for d in c.drafts:                 # atoms unified (or found to broadcast) after it was drafted
        d.atoms = tuple(c.A.find(a) for a in d.atoms if c.A.find(a) not in c.A.dropped)
    drafts = _live(c, [o.stmt for o in outs])
    names = _name_atoms(c, drafts, arg_names)
    stmts = _rename_stmts(drafts, [o.stmt for o in outs], set(arg_names))
    outs = [dataclasses.replace(o, stmt=stmts[o.stmt]) for o in outs]
    params = _param_names(c, names)
    inputs, plans = [], []
    used_inputs = {e.arg[0] for d in drafts for e in d.expr.walk() if e.op is Op.READ}
    for k, arg in enumerate(arg_names):
        if arg not in used_inputs:
            continue
        dims = c.input_dims[arg]
        keep = tuple(j for j, a in enumerate(dims) if c.A.find(a) not in c.A.dropped)
        decl = tuple(names[c.A.find(dims[j])] for j in keep)
        if len(set(decl)) != len(decl):
            raise UnsupportedError(f"input '{arg}' is used along one index on two of its dims (a diagonal)")
        inputs.append(TensorDecl(arg, decl))
        plans.append(InputPlan(k, arg, keep))
    ren = _renamer(c, names, params, stmts)
    out_stmts = []
    for d in drafts:
        idx = tuple(names[c.A.find(a)] for a in d.atoms)
        if len(set(idx)) != len(idx):
            raise UnsupportedError(f"{d.loc or file}: two dims of one tensor turned out to be the same index")
        out_stmts.append(Stmt(stmts[d.name], idx, d.reduce, ren(d.expr), loc=d.loc))
    pdecls = [ParamDecl(params[e], ren(e, param_space=True)) for e in c.params]
    for x, r in _grouped(c):
        pdecls.append(ParamDecl(_ratio(names, x, r, c), Expr(Op.FLOORDIV, (Expr(Op.INDEX, (), names[x]),
                                                                          Expr(Op.INDEX, (), names[r])))))
    key = names.get(c.A.find(c.key)) if c.key is not None else None
    if key is None:
        raise UnsupportedError(f"{file}: no key dimension found: the function has no softmax, row "
                               f"reduction or value contraction over a dimension of its inputs")
    casc = Cascade(tuple(inputs), tuple(_dedupe(pdecls)), tuple(out_stmts), tuple(o.stmt for o in outs), key)
    return casc, tuple(plans), tuple(outs)


def _live(c: Converter, outputs: list[str]) -> list[Draft]:
    by = {d.name: d for d in c.drafts}
    live, stack = set(), list(outputs)
    while stack:
        n = stack.pop()
        if n in live or n not in by:
            continue
        live.add(n)
        stack += [e.arg[0] for e in by[n].expr.walk() if e.op is Op.READ]
    return [d for d in c.drafts if d.name in live]


def _grouped(c: Converter):
    """(query-head atom, KV-head atom) of every grouped read, as roots."""
    return sorted({(c.A.find(x), c.A.find(y)) for y, (x, _) in c.A.grouped.items()})


def _ratio(names, x, r, c) -> str:
    return "r" if len(_grouped(c)) == 1 else f"r_{names[r]}"


def _name_atoms(c: Converter, drafts: list[Draft], args: list[str]) -> dict[int, str]:
    A = c.A
    roots: list[int] = []
    for arg in args:
        for a in c.input_dims.get(arg, ()):
            if A.find(a) not in roots and A.find(a) not in A.dropped:
                roots.append(A.find(a))
    for d in drafts:
        for e in d.expr.walk():
            if e.op is Op.INDEX and A.find(atom_of(e.arg)) not in roots:
                roots.append(A.find(atom_of(e.arg)))
        for a in d.atoms:
            if a not in roots:
                roots.append(a)
    taken = set(args)
    names: dict[int, str] = {}

    def give(a, base):
        if a in names:
            return
        nm, k = base, 1
        while nm in taken:
            k += 1
            nm = f"{base}{k}"
        taken.add(nm)
        names[a] = nm

    key = A.find(c.key) if c.key is not None else None
    grouped = {y: x for x, y in _grouped(c)}
    if key is not None:
        give(key, "n")
    for y in grouped:
        give(y, "g")
    score = next((d for d in drafts if key in d.atoms and _reduced(d, A)), None)
    keyside = {A.find(a) for arg in args for dims in [c.input_dims.get(arg, ())]
               if key in {A.find(x) for x in dims} or set(grouped) & {A.find(x) for x in dims} for a in dims}
    if score is not None:
        for a in _reduced(score, A):
            give(a, "d")
        batch = [a for a in score.atoms if a != key and (a in keyside or a in grouped.values())]
        for a, base in zip(batch, ("b", "h") if len(batch) == 2 else ("b", "h", "c", "f")[:len(batch)]
                           if len(batch) != 1 else ("h",)):
            give(a, base)
        for a in score.atoms:
            give(a, "m")
    for d in drafts:
        for a in _reduced(d, A):
            give(a, "d" if a not in keyside else "e")
    for a in roots:
        give(a, "e")
    return names


def _reduced(d: Draft, A) -> list[int]:
    idx = set(d.atoms)
    out = []
    for e in d.expr.walk():
        subs = [atom_of(e.arg)] if e.op is Op.INDEX else [atom_of(s.index) for s in e.arg[1]] if e.op is Op.READ else []
        for a in subs:
            r = A.find(a)
            if r not in idx and r not in out and r not in A.dropped:
                out.append(r)
    return out


def _rename_stmts(drafts, outputs, taken: set[str]) -> dict[str, str]:
    out, used = {}, set(taken)
    for d in drafts:
        base = d.name.rstrip("0123456789") or "T"
        if d.name in outputs and base in ("S", "R", "M"):
            base = "O"
        nm, k = base, 1
        while nm in used:
            k += 1
            nm = f"{base}{k}"
        used.add(nm)
        out[d.name] = nm
    return out


def _param_names(c: Converter, names) -> dict[Expr, str]:
    out, used = {}, set()
    for e in c.params:
        idx = {names.get(c.A.find(atom_of(i)), "?") for i in e.indices()}
        base = "scale" if idx == {"d"} else "c"
        nm, k = base, 1
        while nm in used or nm in names.values():
            k += 1
            nm = f"{base}{k}"
        used.add(nm)
        out[e] = nm
    return out


def _renamer(c: Converter, names, params, stmts):
    A = c.A
    inputs = set(c.input_dims)
    grouped = {A.find(y): A.find(x) for y, (x, _) in A.grouped.items()}
    gparam = {y: _ratio(names, x, y, c) for x, y in _grouped(c)}
    pmap = {c.params[e]: params[e] for e in c.params}

    def nm(a: int) -> str:
        return names[A.find(a)]

    def fn(e: Expr, param_space: bool = False) -> Expr:
        def rep(x: Expr):
            if x.op is Op.INDEX:
                if A.find(atom_of(x.arg)) in A.dropped:      # the coordinate of a size-1 dim
                    return Expr.const(0.0) if not param_space else Expr.const(1.0)
                return Expr(Op.INDEX, (), nm(atom_of(x.arg)))
            if x.op is Op.PARAM and x.arg in pmap:
                return Expr(Op.PARAM, (), pmap[x.arg])
            if x.op is Op.READ:
                t, subs = x.arg
                if t in inputs:
                    out = []
                    for s in subs:
                        r = A.find(atom_of(s.index))
                        if r in A.dropped:
                            continue
                        out.append(Sub(names[grouped[r]], gparam[r]) if r in grouped else Sub(names[r]))
                    return Expr.read(t, tuple(out))
                return Expr.read(stmts[t], tuple(Sub(nm(atom_of(s.index))) for s in subs
                                                 if A.find(atom_of(s.index)) not in A.dropped))
            return None
        return e.replace(rep)
    return fn


def _dedupe(ps):
    seen, out = set(), []
    for p in ps:
        if p.name not in seen:
            seen.add(p.name)
            out.append(p)
    return out


def restore_locs(c: Cascade, locs: dict[str, Loc]) -> Cascade:
    """Statement locations pointing at the user's source lines (they do not enter the hash)."""
    return c.with_stmts(dataclasses.replace(s, loc=locs.get(s.name, s.loc)) for s in c.stmts)

