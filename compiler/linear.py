"""Linear attention, found on the IR: when a cascade reassociates into a scan over the keys.

The output statement is inlined (every statement indexed by both the query index m
and the key index n is substituted into its reader) into one product summed over
n and the contracted indices D:

    O[g, m, E] = R[g, m, E] * prod_j J_j[g, m] ** p_j
    J[g, m, E] = sum_n sum_D F[g, m, D] * G[g, n, D] * W[m, n] * V[g, n, E]

and accepted when every factor falls in one class:
- F: query-side (depends on m, not on n), indexed by some of D;
- G: key-side (depends on n, not on m), indexed by D; V: key-side, not indexed by D;
- R: query-side, not indexed by D (scales, output gates), including normalisers
  Z[g, m] = sum_n (...) that are themselves such scans with V = 1 (``p = -1``);
- W: indexed by both m and n: a causal mask ``[n <= m]`` / ``[n < m]`` and decays
  ``exp(X)``, ``exp2(X)``, ``c ** X`` whose exponents sum to ``a(m) - a(n) + const``
  (a per-head rate times ``m - n``, or cumulative log-gates ``G[m] - G[n]``).
Anything else indexed by both m and n (a softmax, ``sigmoid(S)``, ``relu(S)``, a
``where`` on a score, a dense [m, n] bias) is non-linear: the cascade is planned
quadratically, and :func:`linear_form` says why.

A decay is kept as ``a(m)`` only; kernels apply it chunk-relative
(``a(i) - a(chunk start)``), never as ``exp(a(m)) * exp(-a(n))``, which overflows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from einattn.ir import COMPARE, LOGIC, Cascade, Expr, Op, Reduce, Stmt, Sub, UnsupportedError, build_product, product_factors

from .masks import affine, atom
from .rewrites import prune_unused


class NotLinear(Exception):
    """Why a cascade is not a linear scan (a reason, never shown as an error)."""


@dataclass(frozen=True, slots=True)
class ScanJob:
    """``J[g, m, E] = sum_n F[g, m, D] . G[g, n, D] * W[m, n] * V[g, n, E]`` over the features
    statements ``query``, ``key`` and ``value`` (None: V = 1, a normaliser)."""
    query: str
    key: str
    value: str | None


@dataclass(frozen=True)
class LinearForm:
    """A cascade as a scan over the keys (see the module docstring).

    ``features`` is a cascade over the original inputs whose outputs are every job's
    F, G, V, the decay ``__A[g, m]`` (when ``decayed``) and ``__R[g, m, E]``; the
    output is ``__R * prod(job ** power)``.
    """
    output: str
    query_index: str
    key_index: str
    grid: tuple[str, ...]
    contract: tuple[str, ...]
    value: tuple[str, ...]
    mask: str                           # "none" | "causal" (n <= m) | "strict" (n < m)
    decay: Expr | None                  # a(m): W = exp(a(m) - a(n)) on the mask
    jobs: tuple[ScanJob, ...]
    powers: tuple[int, ...]             # per job: +1 (numerator) or -1 (a normaliser)
    features: Cascade
    renamed: dict                       # fresh index -> the index whose size it has

    @property
    def causal(self) -> bool:
        return self.mask != "none"

    def describe(self) -> str:
        c, m, n = self.features, self.query_index, self.key_index
        w = {"none": "1", "causal": f"[{n} <= {m}]", "strict": f"[{n} < {m}]"}[self.mask]
        if self.decay is not None:
            w += f" * exp(a({m}) - a({n})),  a({m}) = {self.decay}"
        lines = [f"linear: reassociates into a scan over '{n}' "
                 f"({'chunked scan, state [D, E] carried across chunks' if self.causal else 'state first: Q . (K^T . V)'})",
                 f"  weight W[{m},{n}] = {w}"]
        for j, (job, p) in enumerate(zip(self.jobs, self.powers)):
            what = "numerator" if p > 0 else "normaliser (V = 1), divides"
            lines.append(f"  scan {j} ({what}): F = {c.stmt(job.query).expr}   G = {c.stmt(job.key).expr}"
                         + (f"   V = {c.stmt(job.value).expr}" if job.value else ""))
        lines.append(f"  R = {c.stmt('__R').expr}")
        return "\n".join(lines)


# -- dependence -------------------------------------------------------------------------------------

class _Deps:
    """Which of (m, n) an expression depends on, through reads of statements included."""

    def __init__(self, c: Cascade, m: str, n: str):
        self.c, self.mn = c, (m, n)
        self.hidden: dict[str, set] = {}          # statement -> {m, n} it hides in its reductions
        self.inner: dict[str, set] = {}           # statement -> deps of its expression
        for s in c.stmts:
            d = self(s.expr)
            self.inner[s.name] = d
            self.hidden[s.name] = {i for i in d if i not in s.indices}

    def __call__(self, e: Expr) -> set:
        out = set()
        for x in e.walk():
            if x.op is Op.INDEX and x.arg in self.mn:
                out.add(x.arg)
            elif x.op is Op.READ:
                name, subs = x.arg
                s = self.c.stmt(name)
                if s is None:
                    out |= {u.index for u in subs if u.index in self.mn}
                else:
                    out |= self.hidden[name]
                    out |= {u.index for u, i in zip(subs, s.indices) if u.index in self.mn and i in self.inner[name]}
        return out


# -- inlining into one product ----------------------------------------------------------------------

@dataclass
class _Term:
    num: list
    den: list
    summed: list
    masks: list


def _subst(e: Expr, names: dict[str, str]) -> Expr:
    def fn(x):
        if x.op is Op.INDEX and x.arg in names:
            return Expr(Op.INDEX, (), names[x.arg])
        if x.op is Op.READ:
            t, subs = x.arg
            new = tuple(Sub(names.get(s.index, s.index), s.div) for s in subs)
            if new != subs:
                return Expr.read(t, new)
        return None
    return e.replace(fn)


def _is_zero(e: Expr) -> bool:
    return e.op is Op.CONST and e.arg == 0.0


class _Inliner:
    def __init__(self, c: Cascade, m: str, n: str, deps: _Deps, sizes_of: dict):
        self.c, self.m, self.n, self.deps, self.sizes_of = c, m, n, deps, sizes_of
        self.used = set(c.index_names)

    def fresh(self, i: str) -> str:
        k = 1
        while f"{i}_{k}" in self.used:
            k += 1
        self.used.add(f"{i}_{k}")
        self.sizes_of[f"{i}_{k}"] = self.sizes_of.get(i, i)
        return f"{i}_{k}"

    def stmt(self, s: Stmt, subs: tuple[Sub, ...] | None, taken: set) -> _Term:
        if s.reduce is not Reduce.SUM:
            raise NotLinear(f"{s.name} is a {s.reduce.value} over '{self.n}' of a value indexed by "
                            f"'{self.m}' and '{self.n}' (a max or min is not linear)")
        names = {}
        if subs is not None:
            for u, i in zip(subs, s.indices):
                if u.div is not None:
                    raise NotLinear(f"{s.name} is read with '{u}' (a grouped read of a [{self.m}, {self.n}] "
                                    f"statement)")
                names[i] = u.index
        for r in s.reduced:
            names[r] = self.fresh(r) if r in taken else r
        term = _Term([], [], [names[r] for r in s.reduced], [])
        taken = taken | set(names.values())
        num, den = product_factors(_subst(s.expr, names))
        for f in num:
            self.factor(f, term, False, taken)
        for f in den:
            self.factor(f, term, True, taken)
        return term

    def factor(self, f: Expr, term: _Term, inverse: bool, taken: set) -> None:
        m, n = self.m, self.n
        if f.op is Op.WHERE and (_is_zero(f.src[2]) or _is_zero(f.src[1])) and not inverse:
            cond = f.src[0] if _is_zero(f.src[2]) else Expr(Op.NOT, (f.src[0],))
            term.masks.append(cond)
            inner = f.src[1] if _is_zero(f.src[2]) else f.src[2]
            num, den = product_factors(inner)
            for g in num:
                self.factor(g, term, False, taken)
            for g in den:
                self.factor(g, term, True, taken)
            return
        if f.op in COMPARE or f.op in LOGIC:
            if inverse:
                raise NotLinear(f"division by the predicate {f}")
            term.masks.append(f)
            return
        if f.op is Op.READ and self.c.stmt(f.arg[0]) is not None:
            s = self.c.stmt(f.arg[0])
            sub_idx = {u.index for u in f.arg[1]}
            if {m, n} <= sub_idx:
                if inverse:
                    raise NotLinear(f"division by {f}, a value indexed by both '{m}' and '{n}'")
                t = self.stmt(s, f.arg[1], taken | set(term.summed))
                term.num += t.num
                term.den += t.den
                term.summed += t.summed
                term.masks += t.masks
                return
        (term.den if inverse else term.num).append(f)


# -- the exponent of a decay: a(m) - a(n) + const ---------------------------------------------------

def _linear_parts(x: Expr, deps: _Deps, m: str, n: str):
    """``x`` as (m-terms, n-terms, constant terms), each a list of (coef, scalars, atom), or None.

    Sums, negations and products with a factor free of m and n are split down to their atoms
    (``G[m] * 0.5`` and ``0.5 * G[n]`` give the same atom, renamed); anything else that depends
    on one side only is one atom of that side."""
    d = deps(x)
    if not d:
        return [], [], [(1.0, (), x)]
    if x.op in (Op.ADD, Op.SUB):
        a, b = _linear_parts(x.src[0], deps, m, n), _linear_parts(x.src[1], deps, m, n)
        if a is None or b is None:
            return None
        s = 1.0 if x.op is Op.ADD else -1.0
        return tuple(p + [(s * c, k, t) for c, k, t in q] for p, q in zip(a, b))
    if x.op is Op.NEG:
        a = _linear_parts(x.src[0], deps, m, n)
        return None if a is None else tuple([(-c, k, t) for c, k, t in p] for p in a)
    if x.op in (Op.MUL, Op.DIV):
        y, z = x.src
        if x.op is Op.MUL and not deps(y):
            y, z = z, y
        if not deps(z):
            a = _linear_parts(y, deps, m, n)
            if a is None:
                return None
            if z.op is Op.CONST:
                v = z.arg if x.op is Op.MUL else 1.0 / z.arg
                return tuple([(c * v, k, t) for c, k, t in p] for p in a)
            zz = z if x.op is Op.MUL else Expr(Op.DIV, (Expr.const(1.0), z))
            return tuple([(c, k + (zz,), t) for c, k, t in p] for p in a)
    if d == {m}:
        return [(1.0, (), x)], [], []
    if d == {n}:
        return [], [(1.0, (), x)], []
    return None


def _sum_terms(terms) -> Expr:
    out = None
    for c, k, t in terms:
        e = build_product([t, *k], [])
        e = e if c == 1.0 else Expr(Op.MUL, (Expr.const(c), e))
        out = e if out is None else Expr(Op.ADD, (out, e))
    return out if out is not None else Expr.const(0.0)


def _decay(weights: list[Expr], deps: _Deps, m: str, n: str) -> tuple[Expr, Expr]:
    """(a(m), const) with prod(weights) = exp(a(m) - a(n) + const)."""
    pm, pn, pc = [], [], []
    for w in weights:
        if w.op is Op.EXP:
            x = w.src[0]
        elif w.op is Op.EXP2:
            x = Expr(Op.MUL, (Expr.const(math.log(2.0)), w.src[0]))
        elif w.op is Op.POW and not deps(w.src[0]):
            x = Expr(Op.MUL, (Expr(Op.LOG, (w.src[0],)), w.src[1]))
        else:
            raise NotLinear(f"{w} depends on both '{m}' and '{n}' and is not a decay exp(a({m}) - a({n})): "
                            f"a non-linear function of a value indexed by both")
        both = [r for r in x.walk() if r.op is Op.READ and {m, n} <= deps(r)]
        if both:
            raise NotLinear(f"{w} applies {w.op.value} to {both[0]}, a value of both '{m}' and '{n}' (a softmax "
                            f"or another non-linear function of the scores)")
        parts = _linear_parts(x, deps, m, n)
        if parts is None:
            raise NotLinear(f"the exponent of {w} is not of the form a({m}) - a({n}) + const")
        pm += parts[0]
        pn += parts[1]
        pc += parts[2]
    want = sorted((-c, tuple(sorted(map(str, k))), str(_subst(t, {m: n}))) for c, k, t in pm)
    got = sorted((c, tuple(sorted(map(str, k))), str(t)) for c, k, t in pn)
    if want != got:
        raise NotLinear(f"the decay's exponent is not a({m}) - a({n}): the {m}-part {_sum_terms(pm)} and the "
                        f"{n}-part {_sum_terms(pn)} do not cancel at {m} = {n}")
    return _sum_terms(pm), _sum_terms(pc)


def _mask_kind(masks: list[Expr], m: str, n: str, deps: _Deps) -> str:
    kind = "none"
    for p in masks:
        a = atom(p, m, n) if p.op in COMPARE and deps(p) == {m, n} and _affine_sides(p, m, n) else None
        if a is None or {a.cm, a.cn} != {1.0, -1.0} or _const(a.const) != 0.0:
            raise NotLinear(f"the predicate {p} is not a causal mask [{n} <= {m}] or [{n} < {m}]")
        op = p.op if a.cn == 1.0 else {Op.LE: Op.GE, Op.LT: Op.GT, Op.GE: Op.LE, Op.GT: Op.LT}.get(p.op, p.op)
        # d = n - m  op  0
        this = {Op.LE: "causal", Op.LT: "strict"}.get(op)
        if this is None:
            raise NotLinear(f"the predicate {p} is not a causal mask [{n} <= {m}] or [{n} < {m}]")
        kind = "strict" if "strict" in (kind, this) else this
    return kind


def _affine_sides(p: Expr, m: str, n: str) -> bool:
    return all(affine(x, m, n) is not None for x in p.src)


def _const(e: Expr) -> float | None:
    from einattn.ir.bind import _BIN, _FN
    if e.op is Op.CONST:
        return e.arg
    vals = [_const(s) for s in e.src]
    if None in vals:
        return None
    if e.op in _BIN:
        return _BIN[e.op](*vals)
    if e.op in _FN:
        return _FN[e.op](*vals)
    return None


# -- the form ---------------------------------------------------------------------------------------

def query_index(c: Cascade, out: Stmt) -> str:
    key_side = set()
    for s in c.stmts:
        for x in s.expr.walk():
            if x.op is Op.READ and c.input(x.arg[0]) is not None and any(u.index == c.key for u in x.arg[1]):
                key_side |= {u.index for u in x.arg[1]}
    q = [i for i in out.indices if i not in key_side and i != c.key]
    if len(q) != 1:
        raise NotLinear(f"cannot tell the query index of {out.name}[{', '.join(out.indices)}]: "
                        f"expected one index that no read of a key-side input has, found {q or 'none'}")
    return q[0]


def linear_form(c: Cascade) -> LinearForm:
    """The scan form of ``c``, or :class:`NotLinear` with the reason."""
    if len(c.outputs) != 1:
        raise NotLinear(f"{len(c.outputs)} outputs: a linear scan is derived for one output")
    out = c.stmt(c.outputs[0])
    n = c.key
    if n in out.indices or n not in out.reduced:
        raise NotLinear(f"{out.name} does not reduce over '{n}'")
    m = query_index(c, out)
    deps = _Deps(c, m, n)
    sizes_of: dict[str, str] = {}
    inl = _Inliner(c, m, n, deps, sizes_of)
    main = inl.stmt(out, None, set(out.indices))
    summed = set(main.summed)
    r_factors, terms, inner = [], [], []
    for f, inv in _factors(main):
        idx, z = set(f.indices()), _normaliser(c, f, n)
        if z is not None and not idx & summed:
            if not inv:
                raise NotLinear(f"{f} multiplies the output: a normaliser over '{n}' must divide")
            terms.append((inl.stmt(c.stmt(z), f.arg[1], set(out.indices)), c.stmt(z)))
        elif n not in deps(f) and not idx & summed:
            r_factors.append((f, inv))                      # scales and gates, outside the scan
        else:
            inner.append((f, inv))
    main.num, main.den = [f for f, inv in inner if not inv], [f for f, inv in inner if inv]
    terms.insert(0, (main, out))
    forms, mask, decay = [], None, None
    for t, s in terms:
        contract = [i for i in t.summed if i != n]
        f_q, f_k, f_v, weights = [], [], [], []
        for f, inv in _factors(t):
            d, idx = deps(f), set(f.indices())
            if {m, n} <= d:
                held = c.stmt(f.arg[0]) if f.op is Op.READ else None
                if held is not None and n in held.reduced and n not in held.indices:
                    raise NotLinear(f"{f} is a {held.reduce.value} over '{n}' that is not a plain sum over the "
                                    f"keys (a normaliser divides by a sum of the scan's own terms)")
                if inv:
                    raise NotLinear(f"division by {f}, a value of both '{m}' and '{n}'")
                weights.append(f)
            elif n in d:
                (f_k if idx & set(contract) else f_v).append((f, inv))
            elif s is not out and not d and not idx & set(contract):
                r_factors.append((f, not inv))            # a normaliser's scale divides the output
            else:
                f_q.append((f, inv))
        mk = _mask_kind(t.masks, m, n, deps)
        a, const = _decay(weights, deps, m, n) if weights else (None, Expr.const(0.0))
        if a is not None and mk == "none":
            raise NotLinear(f"a decay exp(a({m}) - a({n})) without a causal mask grows without bound for "
                            f"{n} > {m}: not a scan")
        if s is not out and f_v:
            raise NotLinear(f"the normaliser {s.name} has key-side factors outside the contraction")
        if mask is None:
            mask, decay = mk, a
        elif (mk, str(a)) != (mask, str(decay)):
            raise NotLinear(f"the normaliser {s.name} has another weight than {out.name}")
        if _const(const) != 0.0:
            f_q.append((Expr(Op.EXP, (const,)), False))
        forms.append((f_q, f_k, f_v, contract, s, t))
    f_q0, f_k0, _, contract, _, t0 = forms[0]
    grid = tuple(i for i in out.indices if i != m and any(
        i in f.indices() for f in [f for f, _ in f_q0 + f_k0] + list(t0.masks)
        + ([decay] if decay is not None else [])))
    value = tuple(i for i in out.indices if i not in grid and i != m)
    features, jobs, powers, seen = list(c.stmts), [], [], {}
    for j, (f_q, f_k, f_v, summed, s, _) in enumerate(forms):
        if len(summed) != len(contract):
            raise NotLinear(f"{s.name} contracts {summed}, {out.name} contracts {list(contract)}")
        ren = dict(zip(summed, contract))
        q = _stmt(f"__F{j}", grid + (m,) + tuple(contract), f_q, ren)
        k = _stmt(f"__G{j}", grid + (n,) + tuple(contract), f_k, ren)
        v = _stmt(f"__V{j}", grid + (n,) + value, f_v, ren) if j == 0 else None
        for x in (q, k, v):
            if x is not None:
                _check_indices(x)
        sig = (str(q.expr), str(k.expr))
        if j and sig not in seen:
            raise NotLinear(f"the normaliser {s.name} has features of its own (F = {q.expr}, G = {k.expr}): "
                            f"a separate scan, not built; the quadratic kernel runs it")
        if j and sig in seen:
            jobs.append(ScanJob(jobs[seen[sig]].query, jobs[seen[sig]].key, None))
        else:
            seen.setdefault(sig, len(jobs))
            features += [q, k] + ([v] if v is not None else [])
            jobs.append(ScanJob(q.name, k.name, v.name if v is not None else None))
        powers.append(1 if j == 0 else -1)
    features.append(_stmt("__R", grid + (m,) + value, r_factors, {}))
    if decay is not None:
        features.append(Stmt("__A", grid + (m,), Reduce.SUM, decay))
    names = [x for job in jobs for x in (job.query, job.key, job.value) if x]
    fc = Cascade(c.inputs, c.params, tuple(features),
                 tuple(dict.fromkeys(names)) + ("__R",) + (("__A",) if decay is not None else ()),
                 n, c.name + "_features", "", c.file)
    fc = prune_unused(fc)              # the [m, n] statements are not evaluated: the scan replaces them
    for s in fc.stmts:
        if m in s.all_indices and n in s.all_indices:
            raise NotLinear(f"{s.name} is needed by a feature and spans both '{m}' and '{n}'")
    return LinearForm(out.name, m, n, grid, tuple(contract), value, mask, decay, tuple(jobs), tuple(powers),
                      fc, dict(sizes_of))


def _factors(t: _Term):
    return [(f, False) for f in t.num] + [(f, True) for f in t.den]


def _stmt(name, indices, factors, ren) -> Stmt:
    num = [_subst(f, ren) for f, inv in factors if not inv]
    den = [_subst(f, ren) for f, inv in factors if inv]
    return Stmt(name, tuple(indices), Reduce.SUM, build_product(num, den))


def _check_indices(s: Stmt) -> None:
    extra = [i for i in s.expr.indices() if i not in s.indices]
    if extra:
        raise NotLinear(f"a factor of the scan sums over {extra} inside a feature ({s.expr}): "
                        f"not a product of query-side and key-side features")


def _normaliser(c: Cascade, f: Expr, n: str) -> str | None:
    """The statement a factor reads when it is a plain read of a key-free sum over ``n``."""
    if f.op is not Op.READ:
        return None
    s = c.stmt(f.arg[0])
    if s is None or n in s.indices or n not in s.reduced or s.reduce is not Reduce.SUM:
        return None
    return s.name


# -- the choice between the quadratic kernel and the chunked scan ------------------------------------

@dataclass(frozen=True)
class Choice:
    algorithm: str          # "quadratic" | "chunked"
    chunk: int
    schedule: str           # "fused" | "materialised"
    why: str

    def describe(self) -> str:
        if self.algorithm == "quadratic":
            return f"algorithm quadratic (the 1-pass kernel): {self.why}"
        return f"algorithm chunked scan, CHUNK={self.chunk}, SCHEDULE={self.schedule}: {self.why}"


def scan_flops(form: LinearForm, sizes: dict, chunk: int) -> tuple[float, float]:
    """(quadratic, chunked) FLOPs of one call, the causal triangle counted once in both
    (the quadratic kernel skips masked key tiles; the scan computes each chunk's whole square)."""
    import math
    m, n = sizes[form.query_index], sizes[form.key_index]
    g = math.prod(sizes[i] for i in form.grid)
    d = math.prod(sizes[form.renamed.get(i, i)] for i in form.contract)
    e = math.prod(sizes[i] for i in form.value) + len(form.jobs) - 1
    if not form.causal:
        return 2.0 * g * m * n * (d + e), 2.0 * g * d * e * (m + n)
    return g * m * n * (d + e), g * n * (2.0 * chunk * (d + e) + 4.0 * d * e)


def choose(form: LinearForm, sizes: dict, config: dict, quadratic_ok: bool, refusal: str | None,
           threads: int, scan_efficiency: float = 0.35, default_chunk: int = 64) -> Choice:
    """The algorithm of one call: forced by ``config['ALGORITHM']``, else by cost: the chunked scan
    when its FLOPs, divided by its efficiency relative to the quadratic kernel (measured per
    backend, ``scan_efficiency``), are fewer. CHUNK 0 picks the backend's ``default_chunk`` (at most
    32 below 256 keys); SCHEDULE auto
    picks fused when the grid gives every thread two tasks, else materialised."""
    import math
    m, n = sizes[form.query_index], sizes[form.key_index]
    chunk = config.get("CHUNK", 0) or (default_chunk if n >= 256 else min(32, default_chunk))
    g = math.prod(sizes[i] for i in form.grid)
    sched = config.get("SCHEDULE", "auto")
    if sched == "auto":
        sched = "fused" if g >= 2 * threads or not form.causal else "materialised"
    forced = config.get("ALGORITHM", "auto")
    if form.causal and m != n:
        why = f"a causal scan needs as many queries as keys ({m} != {n})"
        if forced == "chunked" or not quadratic_ok:
            raise UnsupportedError(f"{why}; the quadratic kernel " + (
                "is the algorithm for it: use ALGORITHM='auto'" if quadratic_ok else f"cannot run it: {refusal}"))
        return Choice("quadratic", chunk, sched, why)
    if forced == "quadratic":
        return Choice("quadratic", chunk, sched, "config ALGORITHM='quadratic'")
    if forced == "chunked":
        return Choice("chunked", chunk, sched, "config ALGORITHM='chunked'")
    if not quadratic_ok:
        return Choice("chunked", chunk, sched, f"the quadratic kernel cannot run this cascade ({refusal})")
    fq, fc = scan_flops(form, sizes, chunk)
    if fc / scan_efficiency < fq:
        return Choice("chunked", chunk, sched, f"cheaper: {fc / 1e6:.1f} MFLOP at {scan_efficiency:g}x the "
                      f"quadratic kernel's rate against {fq / 1e6:.1f} MFLOP")
    return Choice("quadratic", chunk, sched, f"cheaper: {fq / 1e6:.1f} MFLOP against the scan's {fc / 1e6:.1f} "
                  f"MFLOP at {scan_efficiency:g}x the rate")
