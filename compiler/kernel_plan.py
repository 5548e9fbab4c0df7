"""The kernel plan: a pass plan classified into the tile program every backend renders.

Index roles: ``grid`` indices (batch, heads: one program each, with the query
tiles), the ``query`` index (tiled by BLOCK_M), the ``key`` index (streamed by
BLOCK_N), ``contract`` indices (summed inside a score contraction, e.g. d) and
``value`` indices (features of the accumulators, e.g. e).

Per pass, each loop statement is one op:
- SCORE: ``S[g, m, n] = sum_f A[g, m, f] * B[g, n, f] * scalars`` (a dot of two tiles);
- MAP: an elementwise [m, n] tile expression;
- ROW_REDUCE: a sum/max/min over the key of a tile expression into per-row state [m];
- VALUE: ``acc[g, m, e] += sum_n p[m, n] * V[g, n, e]`` with an optional online rescale;
- RUNNING: a key-free row statement over running values, after each key tile.
Epilogue (and prologue) statements are elementwise over [m] or [m, e].
"""
from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass

from einattn.ir import Cascade, Expr, Op, Reduce, UnsupportedError, build_product, product_factors

from .masks import empty_tile_is_identity, predicates
from .passes import Role
from .plan import Plan, check_streamable


class Kind(enum.Enum):
    SCORE = "score"
    MAP = "map"
    ROW_REDUCE = "row_reduce"
    VALUE = "value"
    RUNNING = "running"
    ROW = "row"


@dataclass(frozen=True, slots=True)
class TileOp:
    kind: Kind
    name: str
    dims: tuple[str, ...]              # left-hand indices of the statement
    expr: Expr                         # MAP/ROW_REDUCE/RUNNING/ROW: the expression; VALUE: p; SCORE: scalars
    reduce: Reduce | None = None       # ROW_REDUCE / VALUE
    a: Expr | None = None              # SCORE: query-side read;  VALUE: value read (V)
    b: Expr | None = None              # SCORE: key-side read
    contract: str | None = None        # SCORE: the summed index
    rescale: tuple[tuple[str, str], ...] = ()
    recomputed: bool = False


@dataclass(frozen=True, slots=True)
class KernelPass:
    index: int
    loop: tuple[TileOp, ...]
    epilogue: tuple[TileOp, ...]
    mask: Expr | None = None           # the affine predicate that decides tile skipping
    skip_empty: bool = False           # a key tile where ``mask`` is false everywhere can be skipped


@dataclass(frozen=True)
class KernelPlan:
    plan: Plan
    grid: tuple[str, ...]
    query: str
    key: str
    contract: tuple[str, ...]
    value: tuple[str, ...]
    prologue: tuple[TileOp, ...]
    passes: tuple[KernelPass, ...]

    @property
    def cascade(self) -> Cascade:
        return self.plan.cascade

    def skipped_inputs(self) -> tuple[str, ...]:
        """Inputs read with the key index in a pass that skips hidden key tiles. Skipping
        is exact only while they are finite: a NaN or inf at a hidden key reaches the row
        in the reference (through ``0 * NaN``), so a launcher that finds one runs the
        kernel without skipping."""
        return self._skipped

    @functools.cached_property
    def _skipped(self) -> tuple[str, ...]:      # asked on every call of a kernel
        c, out = self.cascade, {}
        for p in self.passes:
            if p.skip_empty:
                for op in p.loop:
                    for x in (op.expr, op.a, op.b):
                        for e in (x.walk() if x is not None else ()):
                            if e.op is Op.READ and c.input(e.arg[0]) is not None and _reads_with(e, self.key):
                                out[e.arg[0]] = None
        return tuple(out)

    def visiting_all(self) -> "KernelPlan":
        """The same plan with no key tile skipped (for inputs that are not all finite)."""
        passes = tuple(dataclasses.replace(p, skip_empty=False) for p in self.passes)
        return dataclasses.replace(self, passes=passes)

    def state(self, p: KernelPass) -> tuple[TileOp, ...]:
        """Per-row state carried across key tiles in pass ``p``."""
        return tuple(op for op in p.loop if op.kind in (Kind.ROW_REDUCE, Kind.VALUE, Kind.RUNNING))


def _unsupported(s, why: str) -> UnsupportedError:
    return UnsupportedError(f"{s.loc or ''}: statement '{s}' cannot be tiled: {why}")


def _reads_with(e: Expr, idx: str) -> bool:
    return e.op is Op.READ and any(sub.index == idx for sub in e.arg[1])


def make_kernel_plan(plan: Plan) -> KernelPlan:
    check_streamable(plan)
    c = plan.cascade
    key = c.key
    # 1. find the score contractions; they fix grid/query/contract indices
    scores = []
    for s in c.stmts:
        if key in s.indices and s.reduced:
            if s.reduce is not Reduce.SUM or len(s.reduced) != 1:
                raise _unsupported(s, "a key tile may only sum over one contraction index")
            f = s.reduced[0]
            num, den = product_factors(s.expr)
            reads = [x for x in num if _reads_with(x, f)]
            if len(reads) != 2 or any(set(x.indices()) & {f, key} for x in den) or \
                    any(x not in reads and set(x.indices()) for x in num):
                raise _unsupported(s, f"expected one [.., m, {f}] and one [.., {key}, {f}] tensor times scalars")
            kb = [x for x in reads if _reads_with(x, key)]
            qa = [x for x in reads if not _reads_with(x, key)]
            if len(kb) != 1 or len(qa) != 1:
                raise _unsupported(s, f"exactly one factor must carry the key index '{key}'")
            scores.append((s, qa[0], kb[0], f, build_product([x for x in num if x not in reads], den)))
    if not scores:
        raise UnsupportedError(f"{c.name}: no score contraction (sum over a feature index of a query-side "
                               f"and a key-side tensor); nothing to tile")
    s0, qa, kb, f, _ = scores[0]
    qi = set(qa.indices()) - {f}
    ki = set(kb.indices()) - {f, key}
    grid = tuple(i for i in s0.indices if i in qi and i in ki)
    query = [i for i in s0.indices if i in qi and i not in ki]
    if len(query) != 1:
        raise _unsupported(s0, f"expected exactly one query index, found {query}")
    query = query[0]
    rowdims = set(grid) | {query}
    contract = tuple(dict.fromkeys(x[3] for x in scores))
    value: dict[str, None] = {}
    score_of = {x[0].name: x for x in scores}

    def classify(step) -> TileOp:
        s = c.stmt(step.name)
        dims = set(s.indices)
        if step.role is Role.TILE:
            if not dims <= rowdims | {key}:
                raise _unsupported(s, f"a key tile may only carry {sorted(rowdims | {key})}")
            if s.name in score_of:
                _, a, b, f, scal = score_of[s.name]
                return TileOp(Kind.SCORE, s.name, s.indices, scal, a=a, b=b, contract=f,
                              recomputed=step.recomputed)
            return TileOp(Kind.MAP, s.name, s.indices, s.expr, recomputed=step.recomputed)
        if step.role is Role.REDUCE:
            if set(s.reduced) != {key}:
                raise _unsupported(s, f"a reduction over the keys may reduce only '{key}'")
            extra = dims - rowdims
            if not extra:
                return TileOp(Kind.ROW_REDUCE, s.name, s.indices, s.expr, reduce=s.reduce, rescale=s.rescale)
            if s.reduce is not Reduce.SUM:
                raise _unsupported(s, "a max/min over the keys must produce per-row values")
            num, den = product_factors(s.expr)
            vs = [x for x in num if x.op is Op.READ and c.input(x.arg[0]) is not None
                  and _reads_with(x, key) and set(x.indices()) & extra]
            if len(vs) != 1:
                raise _unsupported(s, "a value contraction needs exactly one input read [.., n, e]")
            v = vs[0]
            rest = [x for x in num if x is not v]
            if any(set(x.indices()) & extra for x in rest + den) or not set(v.indices()) <= rowdims | {key} | extra:
                raise _unsupported(s, "the value index may only appear in the value tensor")
            value.update(dict.fromkeys(sorted(extra)))
            return TileOp(Kind.VALUE, s.name, s.indices, build_product(rest, den), reduce=Reduce.SUM,
                          a=v, rescale=s.rescale)
        if step.role is Role.RUNNING_ROW:
            if not dims <= rowdims:
                raise _unsupported(s, "a running row statement must be per row")
            return TileOp(Kind.RUNNING, s.name, s.indices, s.expr)
        if not dims <= rowdims | set(value) | set(contract):
            raise _unsupported(s, f"a row statement may only carry {sorted(rowdims | set(value))}")
        if s.reduced:
            raise _unsupported(s, f"a per-row statement that sums over {', '.join(s.reduced)} (a statistic "
                                  f"computed before the key loop) is not supported by the kernels yet; "
                                  f"compute it in PyTorch and pass it as an input, or use target='streaming'")
        return TileOp(Kind.ROW, s.name, s.indices, s.expr)

    passes = []
    for p in plan.schedule:
        loop = tuple(classify(st) for st in p.loop)
        epi = tuple(classify(st) for st in p.epilogue)
        stmts = [c.stmt(st.name) for st in p.loop]
        preds = predicates(stmts, query, key)
        mask, skip = None, False
        if len(preds) == 1:
            mask = preds[0]
            tiles = {op.name for op in loop if op.kind in (Kind.SCORE, Kind.MAP)}
            skip = empty_tile_is_identity(stmts, mask, tiles)
        passes.append(KernelPass(p.index, loop, epi, mask, skip))
    prologue = tuple(classify(st) for st in plan.prologue)
    return KernelPlan(plan, grid, query, key, contract, tuple(value), prologue, tuple(passes))
