"""The IR verifier: structural rules every cascade obeys, before and after each pass."""
from __future__ import annotations

from .errors import Loc, SpecError
from .expr import COMPARE, Expr, Op
from .cascade import Cascade, Reduce

NUM, BOOL = "number", "boolean"


def expr_type(e: Expr, loc: Loc | None = None) -> str:
    """Infer number/boolean; raise SpecError on a mix-up (``&`` on numbers, ...)."""
    def need(x: Expr, want: str, ctx: str):
        got = expr_type(x, loc)
        if got != want:
            fix = ("parenthesise comparisons: (n <= m) & (n > m - W)" if want == BOOL
                   else "turn a condition into a number with where(cond, 1.0, 0.0)")
            raise SpecError(f"{ctx} needs a {want}", loc=loc, expected=want, found=f"{got} '{x}'", fix=fix)
    if e.op in (Op.CONST, Op.PARAM, Op.INDEX, Op.READ):
        return NUM
    if e.op in COMPARE:
        for s in e.src:
            need(s, NUM, f"'{e.op.value}'")
        return BOOL
    if e.op in (Op.AND, Op.OR, Op.NOT):
        for s in e.src:
            need(s, BOOL, f"'{e.op.value}'")
        return BOOL
    if e.op is Op.WHERE:
        need(e.src[0], BOOL, "the condition of where()")
        need(e.src[1], NUM, "where()")
        need(e.src[2], NUM, "where()")
        return NUM
    for s in e.src:
        need(s, NUM, f"'{e.op.value}'")
    return NUM


def verify(c: Cascade) -> Cascade:
    """Check the cascade; return it unchanged or raise SpecError naming the statement."""
    f = c.file
    declared = {t.name: t.indices for t in c.inputs}
    indices: set[str] = set()
    for t in c.inputs:
        indices.update(t.indices)
    params = {p.name: p for p in c.params}
    blocks = {b.name: b for b in c.blocks}
    v11 = c.selects
    for b in c.blocks:
        if b.index not in indices or b.size not in params or b.name in indices:
            raise SpecError(f"bad block index '{b.name}'", loc=b.loc or Loc(f),
                            expected="'index // param' over an input's index and a param")
    indices.update(blocks)
    if c.key not in indices or c.key in blocks:
        raise SpecError(f"key index '{c.key}' is not declared by any input", loc=Loc(f),
                        expected="the index the kernel streams over (keys)",
                        fix="name the key index 'n' or set 'key_index:'")
    for p in c.params:
        for e in p.expr.walk():
            if e.op is Op.READ:
                raise SpecError(f"param '{p.name}' reads a tensor", loc=p.loc)
            if e.op is Op.PARAM and e.arg not in params:
                raise SpecError(f"param '{p.name}' uses unknown param '{e.arg}'", loc=p.loc)
            if e.op is Op.INDEX and e.arg not in indices:
                raise SpecError(f"param '{p.name}' uses unknown dim '{e.arg}'", loc=p.loc)
    _check_param_cycles(c)
    free = free_indices(c)
    defined: dict[str, tuple[str, ...]] = dict(declared)
    for s in c.stmts:
        loc = s.loc or Loc(f)
        if s.name in defined or s.name in params or s.name in indices:
            raise SpecError(f"'{s.name}' is assigned twice or clashes with a name", loc=loc,
                            fix="give each statement a new tensor name")
        if len(set(s.indices)) != len(s.indices):
            raise SpecError(f"left side of '{s.name}' repeats an index", loc=loc)
        for i in s.all_indices:
            if i not in indices:
                raise SpecError(f"index '{i}' in '{s.name}' has no size", loc=loc,
                                expected="an index declared by some input")
        for e in s.expr.walk():
            if e.op is Op.READ:
                t, subs = e.arg
                if t not in defined:
                    raise SpecError(f"'{s.name}' reads '{t}' before it is defined", loc=loc,
                                    fix="define it in an earlier statement or declare it as an input")
                if len(subs) != len(defined[t]):
                    raise SpecError(f"'{t}' read with {len(subs)} subscripts", loc=loc,
                                    expected=str(len(defined[t])))
                if len({x.index for x in subs}) != len(subs):
                    raise SpecError(f"'{s.name}' reads '{t}' with a repeated index", loc=loc,
                                    found=f"{t}[{', '.join(map(str, subs))}]", fix="use distinct indices")
                blocked = tuple(_block_sub(x, d, blocks) for x, d in zip(subs, defined[t]))
                # v1.1: an intermediate may be read as T[.., h // r, ..] (a GQA group's selection)
                grouped = tuple(x.div is not None and v11 and not b and d not in blocks
                                for x, b, d in zip(subs, blocked, defined[t]))
                if t not in declared and any(x.index != d and not b and not gr for x, d, b, gr in
                                             zip(subs, defined[t], blocked, grouped)):
                    want = f"{t}[{', '.join(defined[t])}]"
                    raise SpecError(f"'{s.name}' reads '{t}' with other indices than it was defined with",
                                    loc=loc, expected=want, found=f"{t}[{', '.join(map(str, subs))}]",
                                    fix=f"read intermediate tensors as they were defined: {want}")
                if t in declared:
                    for sub, want, b in zip(subs, declared[t], blocked):
                        if sub.div is None and sub.index != want and want not in free and not b:
                            exp = f"{t}[{', '.join(declared[t])}]"
                            raise SpecError(f"'{s.name}' reads input '{t}' with index '{sub.index}' where "
                                            f"'{want}' is declared", loc=loc, expected=exp,
                                            found=f"{t}[{', '.join(map(str, subs))}]",
                                            fix="read inputs with their declared index names (or "
                                                "'index // param' for grouped heads); to read one "
                                                f"dimension along several indices, declare it with an "
                                                f"index of its own that no statement uses (e.g. "
                                                f"'{t}: [..., t]', then {t}[.., m] and {t}[.., n])")
                for sub, b in zip(subs, blocked):
                    if sub.div is not None and not b and (sub.div not in params or (t not in declared and not v11)):
                        raise SpecError(f"subscript '{sub}' of '{t}'", loc=loc,
                                        expected="'index // param' only on inputs, with a declared param, or "
                                                 "at a block dim declared as that 'index // param'")
            elif e.op is Op.PARAM and e.arg not in params:
                raise SpecError(f"unknown param '{e.arg}' in '{s.name}'", loc=loc)
        if s.select:
            _check_select(s, blocks, loc)
        if s.reduce is not Reduce.SUM and not s.reduced:
            raise SpecError(f"'{s.name}' uses '{s.reduce.value}' but reduces nothing", loc=loc,
                            expected="an index on the right that is not on the left",
                            found=f"left [{', '.join(s.indices)}], right uses [{', '.join(s.expr.indices())}]",
                            fix="drop an index from the left side, or use '=' for an elementwise statement")
        if expr_type(s.expr, loc) != NUM:
            raise SpecError(f"'{s.name}' stores a boolean", loc=loc, expected="a number",
                            fix="write where(cond, 1.0, 0.0)")
        defined[s.name] = s.indices
    if not c.outputs:
        raise SpecError("no outputs", loc=Loc(f))
    for o in c.outputs:
        if o not in defined or o in declared:
            raise SpecError(f"output '{o}' is never defined", loc=Loc(f))
    return c


def _block_sub(sub, dim: str, blocks: dict) -> bool:
    """``sub`` is ``index // size`` read at a block dim declared as exactly that."""
    b = blocks.get(dim)
    return b is not None and sub.div == b.size and sub.index == b.index


def _check_select(s, blocks: dict, loc) -> None:
    kind = s.select[0]
    if not s.indices or s.indices[-1] not in blocks:
        raise SpecError(f"'{s.name}' selects along its last left-hand index, which must be a block index",
                        loc=loc, found=f"[{', '.join(s.indices)}]",
                        expected=f"a block index last, e.g. {s.name}[b,h,m,j] with 'blocks: j: n // BS'")
    if s.reduced:
        raise SpecError(f"the score of '{s.name}' = {kind}(...) reduces [{', '.join(s.reduced)}]", loc=loc,
                        expected="a score over the left-hand indices only",
                        fix="compute the score (a sum over heads, ...) in a statement of its own")
    if expr_type(s.select[1], loc) != NUM:
        raise SpecError(f"the amount of '{s.name}' = {kind}(...) is a boolean", loc=loc, expected="a number")


def free_indices(c: Cascade) -> frozenset[str]:
    """Input indices that no statement or param names: an input may be read along any index
    at such a dimension (``C: [b, h, t]`` read as ``C[b, h, m] - C[b, h, n]``), as long as the
    sizes agree at the call (``renamed_reads``, checked by ``bind_sizes``)."""
    used: set[str] = set()
    for p in c.params:
        used.update(e.arg for e in p.expr.walk() if e.op is Op.INDEX)
    for s in c.stmts:
        used.update(s.indices)
        for e in s.expr.walk():
            if e.op is Op.INDEX:
                used.add(e.arg)
            elif e.op is Op.READ:
                used.update(x.index for x in e.arg[1])
                used.update(x.div for x in e.arg[1] if x.div)
    return frozenset(i for t in c.inputs for i in t.indices if i not in used)


def renamed_reads(c: Cascade):
    """(statement, input, declared index, index read along) of every input read along another
    index than the declared one (``//`` subscripts aside)."""
    declared = {t.name: t.indices for t in c.inputs}
    out = []
    for s in c.stmts:
        for e in s.expr.walk():
            if e.op is Op.READ and e.arg[0] in declared:
                for sub, want in zip(e.arg[1], declared[e.arg[0]]):
                    if sub.div is None and sub.index != want:
                        out.append((s, e.arg[0], want, sub.index))
    return out


def _check_param_cycles(c: Cascade) -> None:
    deps = {p.name: set(p.expr.params()) for p in c.params}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]):
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            loc = next(p.loc for p in c.params if p.name == n)
            raise SpecError("params depend on each other in a cycle", loc=loc,
                            found=" -> ".join(path + [n]), fix="define one of them as a number")
        state[n] = 1
        for d in deps.get(n, ()):
            visit(d, path + [n])
        state[n] = 2

    for p in c.params:
        visit(p.name, [])
