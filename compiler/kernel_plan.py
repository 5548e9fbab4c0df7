"""The kernel plan: a pass plan classified into the tile program every backend renders.

Index roles (``KernelPlan.roles``): ``grid`` indices (batch, heads: one program
each, with the query tiles), the ``query`` index (tiled by BLOCK_M), the ``key``
index (streamed by BLOCK_N), ``contract`` indices (summed inside a score
contraction, e.g. d) and ``value`` indices (features of the accumulators, e.g. e).

Per pass, each loop statement is one typed op (its ``kind`` names the class):
- :class:`ScoreOp`: ``S[g, m, n] = sum_f A[g, m, f] * B[g, n, f] * scalars`` (a dot of two tiles);
- :class:`MapOp`: an elementwise [m, n] tile expression;
- :class:`RowReduceOp`: a sum/max/min over the key of a tile expression into per-row state [m];
- :class:`ValueOp`: ``acc[g, m, e] += sum_n p[m, n] * V[g, n, e]`` with an optional online rescale;
- :class:`RunningOp`: a key-free row statement over running values, after each key tile.
Epilogue (and prologue) statements are :class:`RowOp`: elementwise over [m] or [m, e].

The plan states what the tile program *is*; what a backend can compile is decided
by ``compiler/capabilities.check_capabilities`` and the tile optimisations both
renderers share by ``compiler/lowering``.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Mapping, Union

from einattn.ir import Cascade, Expr, Op, Reduce, Stmt, UnsupportedError, build_product, product_factors

from .masks import empty_tile_is_identity, key_block_read, predicates, where_conditions
from .passes import Role
from .plan import Plan, check_streamable, schedule
from .statistics import split_statistics


class Kind(enum.Enum):
    SCORE = "score"
    MAP = "map"
    ROW_REDUCE = "row_reduce"
    VALUE = "value"
    RUNNING = "running"
    ROW = "row"


Rescale = tuple[tuple[str, str], ...]      # (stabiliser, "exp" | "exp2") factors of an online rescale


@dataclass(frozen=True, slots=True)
class ScoreOp:
    """``name[dims] = sum_contract query_read * key_read * scalars``."""
    kind: ClassVar[Kind] = Kind.SCORE
    name: str
    dims: tuple[str, ...]
    query_read: Expr                   # [.., m, f]
    key_read: Expr                     # [.., n, f]
    contract: str                      # f
    scalars: Expr                      # key- and query-free factor (params, constants)
    recomputed: bool = False           # also computed by an earlier pass

    @property
    def exprs(self) -> tuple[Expr, ...]:
        return (self.scalars, self.query_read, self.key_read)


@dataclass(frozen=True, slots=True)
class MapOp:
    """An elementwise [.., m, n] tile."""
    kind: ClassVar[Kind] = Kind.MAP
    name: str
    dims: tuple[str, ...]
    expr: Expr
    recomputed: bool = False

    @property
    def exprs(self) -> tuple[Expr, ...]:
        return (self.expr,)


@dataclass(frozen=True, slots=True)
class RowReduceOp:
    """``name[.., m] reduce= expr[.., m, n]`` over the keys, carried across key tiles."""
    kind: ClassVar[Kind] = Kind.ROW_REDUCE
    name: str
    dims: tuple[str, ...]
    expr: Expr
    reduce: Reduce
    rescale: Rescale = ()

    @property
    def exprs(self) -> tuple[Expr, ...]:
        return (self.expr,)


@dataclass(frozen=True, slots=True)
class ValueOp:
    """``name[.., m, e] += sum_n weights[.., m, n] * value_read[.., n, e]`` (times the rescale)."""
    kind: ClassVar[Kind] = Kind.VALUE
    name: str
    dims: tuple[str, ...]
    weights: Expr                      # the [m, n] factor (p), free of the value index
    value_read: Expr                   # the one input read [.., n, e]
    value_index: str                   # e
    rescale: Rescale = ()

    @property
    def exprs(self) -> tuple[Expr, ...]:
        return (self.weights, self.value_read)


@dataclass(frozen=True, slots=True)
class RunningOp:
    """A key-free per-row statement over running values, recomputed after each key tile."""
    kind: ClassVar[Kind] = Kind.RUNNING
    name: str
    dims: tuple[str, ...]
    expr: Expr

    @property
    def exprs(self) -> tuple[Expr, ...]:
        return (self.expr,)


@dataclass(frozen=True, slots=True)
class RowOp:
    """A per-row statement outside the key loop (prologue, epilogues); ``reduced`` names the
    indices it reduces (by ``reduce``) over: a value index, after the key loop (an output's norm);
    only a backend whose capabilities allow it compiles a non-empty one."""
    kind: ClassVar[Kind] = Kind.ROW
    name: str
    dims: tuple[str, ...]
    expr: Expr
    reduced: tuple[str, ...] = ()
    reduce: Reduce = Reduce.SUM

    @property
    def exprs(self) -> tuple[Expr, ...]:
        return (self.expr,)


TileOp = Union[ScoreOp, MapOp, RowReduceOp, ValueOp, RunningOp, RowOp]
STATE_KINDS = (Kind.ROW_REDUCE, Kind.VALUE, Kind.RUNNING)


@dataclass(frozen=True, slots=True)
class KernelPass:
    index: int
    loop: tuple[TileOp, ...]
    epilogue: tuple[RowOp, ...]
    mask: Expr | None = None           # the affine predicate that decides tile skipping
    skip_empty: bool = False           # a key tile where ``mask`` is false everywhere can be skipped
    # block-sparse (a condition reads T[.., n // BS]): the key loop visits a host-made list of key
    # tiles, those where one of these where() conditions may hold (backends/tiles.py); a tile where
    # all are false contributes only identities (checked here)
    sites: tuple[Expr, ...] = ()

    @property
    def state(self) -> tuple[TileOp, ...]:
        """Per-row state carried across key tiles (reductions, accumulators, running rows)."""
        return tuple(op for op in self.loop if op.kind in STATE_KINDS)

    @property
    def tiles(self) -> tuple[str, ...]:
        """Names of the [m, n] tiles (scores and maps) computed per key tile."""
        return tuple(op.name for op in self.loop if op.kind in (Kind.SCORE, Kind.MAP))

    @property
    def stabilisers(self) -> tuple[str, ...]:
        """Running maxima whose previous value the online rescale needs, in first-use order."""
        return tuple(dict.fromkeys(m for op in self.loop for m, _ in getattr(op, "rescale", ())))


@dataclass(frozen=True)
class KernelPlan:
    plan: Plan
    grid: tuple[str, ...]
    query: str
    key: str
    contract: tuple[str, ...]
    value: tuple[str, ...]
    prologue: tuple[RowOp, ...]
    passes: tuple[KernelPass, ...]
    # statistics computed before the kernel and read by it as inputs (compiler/statistics.py);
    # ``plan`` is then the plan of the kernel's cascade, where they are inputs
    pre: tuple[Stmt, ...] = ()

    @property
    def cascade(self) -> Cascade:
        return self.plan.cascade

    @functools.cached_property
    def roles(self) -> Mapping[str, str]:
        """Index -> ``grid`` / ``query`` / ``key`` / ``contract`` / ``value``."""
        roles = {i: "grid" for i in self.grid}
        roles[self.query], roles[self.key] = "query", "key"
        roles.update({i: "contract" for i in self.contract})
        roles.update({i: "value" for i in self.value})
        return MappingProxyType(roles)

    @property
    def rowdims(self) -> frozenset[str]:
        """The indices of one row: grid and query."""
        return frozenset(self.grid) | {self.query}

    @functools.cached_property
    def rows(self) -> frozenset[str]:
        """Names of the per-row values: prologue, per-pass state and epilogue statements."""
        out = {op.name for op in self.prologue}
        for p in self.passes:
            out |= {op.name for op in p.state} | {op.name for op in p.epilogue}
        return frozenset(out)

    @functools.cached_property
    def ops(self) -> Mapping[str, TileOp]:
        """Every op by statement name (the last pass's op for one computed again)."""
        out = {op.name: op for p in self.passes for op in p.loop + p.epilogue}
        out.update({op.name: op for op in self.prologue})
        return MappingProxyType(out)

    @functools.cached_property
    def scores(self) -> tuple[ScoreOp, ...]:
        """The distinct score contractions, in order of first use."""
        out: dict[str, ScoreOp] = {}
        for p in self.passes:
            for op in p.loop:
                if op.kind is Kind.SCORE:
                    out.setdefault(op.name, op)
        return tuple(out.values())

    @functools.cached_property
    def outputs(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(name, indices) of each output, in ``outputs:`` order."""
        c = self.cascade
        return tuple((o, c.stmt(o).indices if c.stmt(o) is not None else ()) for o in c.outputs)

    @functools.cached_property
    def static(self) -> tuple[str, ...]:
        """Indices whose sizes are compiled in (the shape bucket): contraction, value and
        per-row feature indices. Grid, query and key sizes stay runtime values."""
        out = dict.fromkeys(self.contract + self.value)
        rowdims = set(self.grid) | {self.query, self.key}
        for s in self.cascade.stmts:
            if self.key not in s.all_indices:
                for d in s.indices:
                    if d not in rowdims:
                        out[d] = None
        return tuple(out)

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
                    for x in op.exprs:
                        for e in x.walk():
                            if e.op is Op.READ and c.input(e.arg[0]) is not None and _reads_with(e, self.key):
                                out[e.arg[0]] = None
        return tuple(out)

    @property
    def tile_lists(self) -> bool:
        """The key loops visit host-made lists of key tiles (block-sparse; ``backends/tiles.py``)."""
        return any(p.sites for p in self.passes)

    def visiting_all(self) -> "KernelPlan":
        """The same plan with no key tile skipped (for inputs that are not all finite)."""
        passes = tuple(dataclasses.replace(p, skip_empty=False) for p in self.passes)
        return dataclasses.replace(self, passes=passes)

    def state(self, p: KernelPass) -> tuple[TileOp, ...]:
        """Per-row state carried across key tiles in pass ``p`` (``p.state``)."""
        return p.state

    def describe(self) -> str:
        """The tile program as text: roles, then per pass its mask and typed ops."""
        lines = ["roles: " + ", ".join(f"{i}={r}" for i, r in self.roles.items()),
                 f"compiled-in sizes: {', '.join(self.static) or '(none)'}"]
        if self.pre:
            lines.append("before the kernel (statistics over inputs, read by the kernel as inputs):")
            lines += [f"  {s}" for s in self.pre]
        if self.prologue:
            lines.append("prologue:")
            lines += [f"  {op_text(op)}" for op in self.prologue]
        for p in self.passes:
            mask = f"mask {p.mask}" + (", empty key tiles skipped" if p.skip_empty else "") \
                if p.mask is not None else "no mask"
            lines.append(f"pass {p.index} ({mask}):")
            if p.sites:
                lines.append("  block-sparse: the key loop visits a host-made list of the key tiles where one of "
                             + ", ".join(map(str, p.sites)) + " may hold")
            lines += [f"  {op_text(op)}" for op in p.loop]
            if p.epilogue:
                lines.append("  epilogue:")
                lines += [f"    {op_text(op)}" for op in p.epilogue]
        return "\n".join(lines)


def op_text(op: TileOp) -> str:
    """One line: the op's class and its named fields."""
    head = f"{type(op).__name__} {op.name}[{','.join(op.dims)}]"
    if op.kind is Kind.SCORE:
        body = f"sum_{op.contract} {op.query_read} * {op.key_read} * {op.scalars}"
    elif op.kind is Kind.VALUE:
        body = f"+= sum_n ({op.weights}) * {op.value_read}  (value index {op.value_index})"
    elif op.kind is Kind.ROW_REDUCE:
        body = f"{op.reduce.name.lower()}= {op.expr}"
    elif op.kind is Kind.ROW and op.reduced:
        body = f"= sum_{','.join(op.reduced)} {op.expr}"
    else:
        body = f"= {op.expr}"
    extra = [f"rescaled by {base}({m}_old - {m})" for m, base in getattr(op, "rescale", ())]
    if getattr(op, "recomputed", False):
        extra.append("recomputed")
    return f"{head} {body}" + (f"  [{'; '.join(extra)}]" if extra else "")


def _unsupported(s, why: str) -> UnsupportedError:
    return UnsupportedError(f"{s.loc or ''}: statement '{s}' cannot be tiled: {why}")


def _reads_with(e: Expr, idx: str) -> bool:
    return e.op is Op.READ and any(sub.index == idx for sub in e.arg[1])


def make_kernel_plan(plan: Plan) -> KernelPlan:
    check_streamable(plan)
    pre, kc = split_statistics(plan.cascade)
    if pre:
        prologue, schedule_, placements = schedule(kc)
        plan = dataclasses.replace(plan, cascade=kc, schedule=schedule_, prologue=prologue, placements=placements)
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
        raise UnsupportedError(f"{c.file}: '{c.name}' has no score contraction (a sum over a feature index of "
                               f"a query-side and a key-side tensor, such as Q[b,h,m,d] * K[b,h,{c.key},d]): the "
                               f"kernels tile the keys of one; use target='streaming' or 'reference'")
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
                return ScoreOp(s.name, s.indices, a, b, f, scal, recomputed=step.recomputed)
            return MapOp(s.name, s.indices, s.expr, recomputed=step.recomputed)
        if step.role is Role.REDUCE:
            if set(s.reduced) != {key}:
                raise _unsupported(s, f"a reduction over the keys may reduce only '{key}'")
            extra = dims - rowdims
            if not extra:
                return RowReduceOp(s.name, s.indices, s.expr, s.reduce, s.rescale)
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
            if len(extra) != 1:
                raise _unsupported(s, f"a value contraction may carry one value index, found {sorted(extra)}")
            value.update(dict.fromkeys(sorted(extra)))
            return ValueOp(s.name, s.indices, build_product(rest, den), v, next(iter(extra)), s.rescale)
        if step.role is Role.RUNNING_ROW:
            if not dims <= rowdims:
                raise _unsupported(s, "a running row statement must be per row")
            return RunningOp(s.name, s.indices, s.expr)
        if not dims <= rowdims | set(value) | set(contract):
            raise _unsupported(s, f"a row statement may only carry {sorted(rowdims | set(value))}")
        return RowOp(s.name, s.indices, s.expr, tuple(s.reduced), s.reduce)

    passes = []
    for p in plan.schedule:
        loop = tuple(classify(st) for st in p.loop)
        epi = tuple(classify(st) for st in p.epilogue)
        stmts = [c.stmt(st.name) for st in p.loop]
        preds = predicates(stmts, query, key)
        mask, skip = None, False
        tiles = {op.name for op in loop if op.kind in (Kind.SCORE, Kind.MAP)}
        if len(preds) == 1:
            mask = preds[0]
            skip = empty_tile_is_identity(stmts, mask, tiles)
        conds = tuple(where_conditions(stmts))
        sites = ()
        # (a pass where an all-false tile still adds something, such as an unmasked max, visits every tile)
        if any(key_block_read(e, key) for cd in conds for e in cd.walk()) and \
                empty_tile_is_identity(stmts, conds, tiles):
            sites = conds
        passes.append(KernelPass(p.index, loop, epi, mask, skip, sites))
    prologue = tuple(classify(st) for st in plan.prologue)
    return KernelPlan(plan, grid, query, key, contract, tuple(value), prologue, tuple(passes), pre)
