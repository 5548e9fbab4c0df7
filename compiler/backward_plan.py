"""The backward schedule: the backward cascade split into kernels the forward machinery runs.

A backward cascade (``compiler/autodiff.py``) reduces over the keys (``dQ[m, d] =
sum_n dS K``), over the queries (``dK[n, d] = sum_m dS Q``, ``dV[n, e] = sum_m P dO``)
and over rows (``dslope[h] = sum_{b, m} ..``). Each statement gets a *stage*:

- **dq** (streams the keys ``n``, one program per query tile): every statement that
  reduces over the key index, with the ``[m, n]`` tiles it reads recomputed;
- **dkv** (streams the *queries*: the same kernel plan with ``key_index`` set to the query
  index, one program per key tile, FlashAttention-2's loop order): every statement
  that reduces over the queries into a per-key value;
- **tiles** (torch, over blocks of queries, after the kernels): a gradient that is itself
  an ``[m, n]`` tensor (a dense bias ``B[h, m, n]``), which no kernel holds; its memory is
  one block of queries' tiles at a time, its output is as large as the bias;
- **rows** (torch, after the kernels): what reduces over grid indices or query rows
  only, O(B·H·N) work: a per-head slope's gradient summed over batch and queries,
  the group sum of a GQA head's key gradients.

Row terms that read only inputs, saved values and incoming gradients (``D[m] = sum_e
dO O / L``, a gate's ``dA = dO * sigmoid(G)``) form a **pre** stage (torch, before the
kernels, O(B·H·N·e)), FlashAttention-2's preprocess; the kernels read them as inputs.
A statement that sums over the keys *and* rows (``dslope[h] = sum_{b,m,n} ..``) is split:
the key sum in the dq kernel (one value per row), the rest in rows. A stage reads the
values an earlier stage produced as inputs (centered_relu's dkv kernel reads ``dMu[m]``,
a sum over keys from the dq kernel).
Each kernel stage is an ordinary cascade: it goes through the same pass analysis,
rewrites, kernel plan and backends as a forward spec.
"""
from __future__ import annotations

from dataclasses import dataclass

from einattn.ir import Cascade, Reduce, Stmt, Sub, TensorDecl, UnsupportedError, verify
from einattn.ir import Expr, Op

from .autodiff import Backward


@dataclass(frozen=True)
class Stage:
    """One step of the backward: ``kind`` is ``kernel`` (a cascade compiled for the target,
    streaming ``cascade.key``), ``rows`` (evaluated with torch in the compute dtype) or
    ``tiles`` (torch, over blocks of the query index)."""
    name: str
    kind: str
    cascade: Cascade


@dataclass(frozen=True)
class BackwardPlan:
    backward: Backward
    query: str
    stages: tuple[Stage, ...]

    def __str__(self) -> str:
        lines = [str(self.backward), "schedule:"]
        for st in self.stages:
            c = st.cascade
            how = {"kernel": f"kernel streaming '{c.key}'", "rows": "rows (torch)",
                   "tiles": f"[{self.query}, {c.key}] tiles (torch, over blocks of '{self.query}')"}[st.kind]
            if st.kind == "kernel":
                from .plan import make_plan
                p = make_plan(c)
                how += f", {p.passes} pass(es) over '{c.key}' ({p.naive_passes} as written)"
            lines.append(f"  {st.name}: {how}; inputs {', '.join(t.name for t in c.inputs)}; "
                         f"outputs {', '.join(c.outputs)}")
            lines += [f"    {s}" for s in c.stmts]
        return "\n".join(lines)


def _read(name: str, dims) -> Expr:
    return Expr.read(name, tuple(Sub(i) for i in dims))


def _split_key_sums(c: Cascade, key: str, taken: set[str]) -> list[Stmt]:
    """A sum over the key and other indices becomes the key sum (kept per row) and the rest."""
    out = []
    for s in c.stmts:
        rest = [i for i in s.reduced if i != key]
        if key in s.reduced and rest:
            inner = s.name + "_rows"
            while inner in taken:
                inner += "_"
            taken.add(inner)
            dims = s.indices + tuple(rest)
            out.append(Stmt(inner, dims, Reduce.SUM, s.expr, s.loc))
            out.append(Stmt(s.name, s.indices, Reduce.SUM, _read(inner, dims), s.loc))
        else:
            out.append(s)
    return out


def _stage_of(s: Stmt, query: str, key: str) -> str:
    if key in s.reduced:
        return "dq"
    if query in s.reduced and key in s.indices:
        return "dkv"
    if query in s.indices and key in s.indices:
        return "tile"
    return "rows"


def query_index(c: Cascade) -> str:
    """The query index of a forward cascade: on the left of its first score contraction
    (a sum that keeps the key index), carried by no read along the keys."""
    for s in c.stmts:
        if c.key in s.indices and s.reduce is Reduce.SUM and s.reduced:
            reads = [e for e in s.expr.walk() if e.op is Op.READ]
            keyside = {u.index for e in reads if any(u.index == c.key for u in e.arg[1]) for u in e.arg[1]}
            q = [i for i in s.indices if i != c.key and i not in keyside]
            if len(q) == 1:
                return q[0]
    raise UnsupportedError(f"{c.file}: '{c.name}' has no score contraction (a sum over a feature index of a "
                           f"query-side and a key-side tensor), so its backward has no query index to stream; "
                           f"use target='reference'")


def plan_backward(bw: Backward, query: str | None = None) -> BackwardPlan:
    """Split ``bw.cascade`` into dq / dkv kernels and a rows stage (``query``: the forward's
    query index, found by ``query_index`` when not given). Raises UnsupportedError where a
    kernel cannot hold a gradient."""
    c0 = bw.cascade
    query = query or query_index(bw.forward)
    if not c0.outputs:              # no output depends on an input that requires grad
        return BackwardPlan(bw, query, ())
    for y in bw.routed:
        s = bw.forward.stmt(y)
        if c0.key in s.all_indices:
            raise UnsupportedError(
                f"{s.loc or c0.file}: '{y}' is a {s.reduce.value[:-1]} over the keys that an output depends on "
                f"(not a stabiliser that cancels): its gradient goes to the key that attains it, which the "
                f"backward kernels would find by comparing recomputed scores with the saved '{y}', not "
                f"reproducible bit for bit across kernels; use target='reference' for its gradient")
    key = c0.key
    taken = {s.name for s in c0.stmts} | {t.name for t in c0.inputs} | {p.name for p in c0.params}
    stmts = _split_key_sums(c0, key, taken)
    by = {s.name: s for s in stmts}
    stage = {s.name: _stage_of(s, query, key) for s in stmts}
    for o in c0.outputs:
        if stage[o] == "tile":          # a dense bias's gradient: [m, n] by nature
            stage[o] = "tiles"
    inputs = {t.name: t for t in c0.inputs}
    for s in stmts:      # row terms of inputs only (D = sum_e dO * O / L): before the kernels
        if stage[s.name] == "rows" and all(r in inputs or stage.get(r) == "pre" for r in s.expr.reads()):
            stage[s.name] = "pre"

    def closure(roots, own: str) -> tuple[list[str], set[str]]:
        """Statements a stage computes (in order) and the other stages' values it reads."""
        mine, ext, todo = set(), set(), list(roots)
        while todo:
            y = todo.pop()
            if y in mine or y in inputs:
                continue
            if stage[y] in ("dq", "dkv", "pre", "tiles") and stage[y] != own:
                ext.add(y)
                continue
            mine.add(y)
            todo += list(by[y].expr.reads())
        return [s.name for s in stmts if s.name in mine], ext

    kernels = {}
    for k in ("dq", "dkv"):
        roots = [s.name for s in stmts if stage[s.name] == k]
        if roots:
            kernels[k] = closure(roots, k)
    post_names, post_ext = closure(list(c0.outputs), "rows")
    post_names = [n for n in post_names if stage[n] == "rows"]
    pre = [s.name for s in stmts if stage[s.name] == "pre"]
    order = list(kernels)
    if "dq" in kernels and "dkv" in kernels:
        a = {e for e in kernels["dq"][1] if stage[e] == "dkv"}
        b = {e for e in kernels["dkv"][1] if stage[e] == "dq"}
        if a and b:
            raise UnsupportedError(f"the backward of '{bw.forward.name}' needs sums over the keys and over "
                                   f"the queries that each read the other ({sorted(a)}, {sorted(b)}): no "
                                   f"order of the dq and dkv kernels computes them; use target='reference'")
        if a:
            order = ["dkv", "dq"]
    tiles = [o for o in c0.outputs if stage[o] == "tiles"]
    tiles_names, tiles_ext = closure(tiles, "tiles") if tiles else ([], set())
    for n in tiles_names:
        if query in by[n].reduced:
            raise UnsupportedError(f"the gradient '{n}' is a [{query}, {key}] tensor that needs '{by[n]}', a "
                                   f"sum over the queries: einattn computes such gradients over blocks of "
                                   f"queries only; use target='reference'")
    # what each stage exports: its values read by another stage or returned
    wanted = set(c0.outputs) | post_ext | tiles_ext | set().union(*(kernels[k][1] for k in kernels))
    produced: dict[str, TensorDecl] = {}
    out_stages = []
    if pre:
        outs = tuple(n for n in pre if n in wanted)
        out_stages.append(Stage("pre", "rows", _cascade(c0, [by[n] for n in pre], outs, [], key,
                                                         f"{bw.forward.name}_pre")))
        produced.update({n: TensorDecl(n, by[n].indices) for n in outs})
    for k in order:
        names, ext = kernels[k]
        outs = tuple(n for n in names if stage[n] == k and n in wanted)
        kc = _cascade(c0, [by[n] for n in names], outs, [produced[e] for e in sorted(ext)],
                      key if k == "dq" else query, f"{bw.forward.name}_{k}")
        out_stages.append(Stage(k, "kernel", kc))
        produced.update({n: TensorDecl(n, by[n].indices) for n in outs})
    if tiles:
        tc = _cascade(c0, [by[n] for n in tiles_names], tuple(tiles), [produced[e] for e in sorted(tiles_ext)],
                      key, f"{bw.forward.name}_tiles")
        out_stages.append(Stage("tiles", "tiles", tc))
        produced.update({n: TensorDecl(n, by[n].indices) for n in tiles})
    if post_names:
        read = {r for n in post_names for r in by[n].expr.reads()}
        ext = sorted(e for e in post_ext if e in produced and e in read)
        rc = _cascade(c0, [by[n] for n in post_names], tuple(o for o in c0.outputs if o in post_names),
                      [produced[e] for e in ext], key, f"{bw.forward.name}_rows")
        out_stages.append(Stage("rows", "rows", rc))
    return BackwardPlan(bw, query, tuple(out_stages))


def _cascade(c0: Cascade, stmts: list[Stmt], outputs, extra: list[TensorDecl], key: str, name: str) -> Cascade:
    """A stage's cascade: the inputs and params its statements use (and those declaring their
    indices), the earlier stages' values it reads, its statements."""
    reads = {r for s in stmts for r in s.expr.reads()} | set(outputs)
    extra_names = {t.name for t in extra}
    ins = [t for t in c0.inputs if t.name in reads and t.name not in extra_names] + list(extra)
    used = {p for s in stmts for p in s.expr.params()}
    params, todo = {}, list(used)
    known = {p.name: p for p in c0.params}
    while todo:
        p = todo.pop()
        if p in known and p not in params:
            params[p] = known[p]
            todo += [e.arg for e in known[p].expr.walk() if e.op is Op.PARAM]
    need = {i for s in stmts for i in s.all_indices} | {i for p in params.values() for i in p.expr.indices()}
    need.add(key)
    have = {i for t in ins for i in t.indices}
    for t in c0.inputs:
        if (need - have) & set(t.indices) and t not in ins:
            ins.append(t)
            have |= set(t.indices)
    c = Cascade(tuple(ins), tuple(p for p in c0.params if p.name in params), tuple(stmts), tuple(outputs), key,
                name, c0.doc, c0.file)
    return verify(c)
