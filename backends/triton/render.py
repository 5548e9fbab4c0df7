"""Render a KernelPlan into Triton source (``templates/triton/attention.py.jinja``).

The renderer turns each tile op into lines of code through the expression
printer (:mod:`einattn.backends.triton.expr`, the one hook for user
expressions) and hands the template plain lists; the template only lays them
out with ``if``/``for`` over plan flags.

Key tiles are visited in up to three loops per pass: ``[lo, flo)`` and
``[fhi, hi)`` with the mask predicate and key bounds evaluated (the SLOW body),
``[flo, fhi)`` with neither (the FAST body). ``lo``/``hi`` bound the key tiles
that are not empty for the query tile (only when the pass may skip empty
tiles), ``flo``/``fhi`` the tiles where the predicate is true everywhere; both
come from the affine atoms of a conjunctive mask at the tile's corners. Any
other affine mask (a disjunction such as prefix-LM) classifies each key tile at
run time instead (full / partial / empty) in one loop.

With ``split`` (``KV_SPLITS > 1``) the key loop of a one-pass plan is cut into
parts along a third grid axis; each part stores its per-row state to fp32
workspaces, and a second kernel in the same file merges the parts
(``compiler.splits.merges``), runs the epilogue and stores the outputs.

What the kernel can compile is checked before rendering (``TritonBackend.capabilities``,
``compiler.capabilities``); which loads are hoisted out of the key loop comes from the
``hoist_key_free_reads`` lowering rule (``compiler.lowering``). The other rules
(copies of tiles, fused reductions, staged reads) bring nothing here: Triton binds a
copy for free, fuses the loops itself and loads tiles with ``tl.load``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import math
from dataclasses import dataclass, field

from einattn.compiler.kernel_plan import Kind, KernelPass, KernelPlan, TileOp
from einattn.compiler.lowering import hoist_key_free_reads
from einattn.compiler.masks import atom, substitute, tile_decision
from einattn.compiler.splits import merges
from einattn.ir import Expr, Op, Reduce, eval_scalar

from einattn.compiler.infinity import inf_flags

from .expr import LOG2E, NEG_INF, Printer, const_text, deps, online_max, unwrap

TEMPLATE = ("triton", "attention.py.jinja")


@dataclass(frozen=True)
class Arg:
    """One kernel argument: ``kind`` is ptr, stride, size, param, workspace (a split part's fp32
    state, [KV_SPLITS, programs of grid axis 1, size_m(, BLOCK_e)]), tiles or tiles_stride (the
    block-sparse key-tile lists, ``backends/tiles.py``); ``of`` names what it belongs to."""
    name: str
    kind: str
    of: str
    dim: int = 0
    dtype: str = "fp32"     # params: fp32 or i32


@dataclass(frozen=True)
class Rendered:
    source: str
    kernel_name: str
    args: tuple[Arg, ...]
    constexprs: tuple[str, ...]     # names of the compile-time constants, in signature order
    grid: tuple[str, ...]           # grid indices (one program per combination and query tile)
    query: str
    key: str
    contract: tuple[str, ...]
    value: tuple[str, ...]
    outputs: tuple[tuple[str, tuple[str, ...]], ...]
    combine_name: str = ""          # the merge kernel of a split key loop (same arguments), "" unsplit
    workspaces: tuple[tuple[str, str | None], ...] = ()   # (state, its value index or None) when split
    folds: tuple[tuple[str, Expr], ...] = ()   # (FOLD_<score> constexpr, the scalars whose sign sets it)
    tma: tuple[tuple[str, int, int], ...] = ()  # descriptor loads: (input, its key dim, its feature dim)
    key_blocks: tuple[str, ...] = ()            # block-size params of KB_<param> (BLOCK_N divides them)

    @property
    def split(self) -> bool:
        return bool(self.combine_name)


@dataclass
class PassView:
    index: int
    init: list[str] = field(default_factory=list)
    hoisted: list[str] = field(default_factory=list)
    bounds: list[str] = field(default_factory=list)
    mode: str = "intervals"           # intervals | classify
    slow_left: bool = False           # a SLOW loop before the FAST one
    classify: list[str] = field(default_factory=list)
    skip_empty: bool = False
    fast: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    epilogue: list[str] = field(default_factory=list)
    mask: str = ""


@dataclass(frozen=True)
class ScoreFold:
    """A score whose scalars leave the tile (issue 15, rule 2): where a score ``S = dot * c`` feeds only
    ``where(pred, S, -inf)`` maps, the online stabiliser ``M = max S`` and the online form
    ``exp(S - M)``, and ``c > 0``, the kernel keeps the raw products: ``max(dot * c) = c * max(dot)``
    once per row, and ``exp(dot * c - M)`` takes ``c`` in its FMA (one multiply per score less).
    ``c``'s sign is a run-time fact (params): the constexpr ``FOLD_<S>`` (launch: ``0 < c < inf``)
    picks ``sf_<S> = c, sk_<S> = 1`` or ``sf_<S> = 1, sk_<S> = c``; the compiler folds the 1s away."""
    score: str
    scalars: Expr
    raw: frozenset          # tiles holding raw products: the score and its where-maps
    maxes: frozenset        # stabilisers over them (reduced raw, then scaled by sf_<S>)

    @property
    def flag(self) -> str:
        return f"FOLD_{self.score}"


# the ops of scalars whose sign abi.constexpr_values evaluates (ir.eval_scalar) to set FOLD_<S>
SCALAR_OPS = {Op.CONST, Op.PARAM, Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.NEG, Op.SQRT, Op.RSQRT}


def online_bounds(kp: KernelPlan) -> dict[str, frozenset]:
    """The maxima an online-form exp may subtract (expr.Printer.online) and what each is at least:
    a max reduction over the keys its operand; a per-row ``max(a, b, ..)`` over one of them (a sink
    logit beside the tiles' max) its operands and their bounds."""
    def leaves(e: Expr) -> list[Expr]:
        e = unwrap(e)
        return leaves(e.src[0]) + leaves(e.src[1]) if e.op is Op.MAX else [e]
    out: dict[str, frozenset] = {}
    for p in kp.passes:
        for op in (*p.loop, *p.epilogue):
            if op.kind is Kind.ROW_REDUCE and op.reduce is Reduce.MAX:
                out[op.name] = frozenset({op.expr})
            elif op.kind in (Kind.RUNNING, Kind.ROW) and op.expr.op is Op.MAX and not getattr(op, "reduced", ()):
                ls = leaves(op.expr)
                named = [out[x.arg[0]] for x in ls if x.op is Op.READ and x.arg[0] in out]
                if named:
                    out[op.name] = frozenset(ls).union(*named)
    return out


def log2_rescaled(kpass: KernelPass, online: dict[str, frozenset]) -> set[str]:
    """Stabilisers whose online rescale may use the exps' own rounded row max (expr.Printer
    .online_rescale): every exp of the pass that reads one subtracts it in the online form."""
    out = {m for m in kpass.stabilisers if m in online}
    for op in kpass.loop:
        for e in op.exprs:
            for x in e.walk():
                if x.op is not Op.EXP:
                    continue
                reads = {r.arg[0] for r in x.walk() if r.op is Op.READ}
                if online_max(x.src[0], online) is None or len(reads & out) > 1:
                    out -= reads
    return out


def score_folds(kpass: KernelPass, online: dict[str, frozenset]) -> list[ScoreFold]:
    """The scores of a pass whose scalars fold out (:class:`ScoreFold`): every read of the raw tiles
    is a where-map's value, a stabiliser's whole operand or the ``y`` of an online ``exp(y - M)``."""
    ops = kpass.loop
    out = []
    for sc in ops:
        if sc.kind is not Kind.SCORE or (sc.scalars.op is Op.CONST and sc.scalars.arg == 1.0) \
                or any(x.op not in SCALAR_OPS for x in sc.scalars.walk()):
            continue
        raw, allowed = {sc.name}, 0
        for op in ops:
            e = getattr(op, "expr", None)
            if op.kind is Kind.MAP and e.op is Op.WHERE and e.src[0].op is not Op.CONST:
                for val, other in ((e.src[1], e.src[2]), (e.src[2], e.src[1])):
                    if val.op is Op.READ and val.arg[0] in raw and other.op is Op.CONST \
                            and other.arg == -math.inf:
                        raw.add(op.name)
                        allowed += 1
                        break
        maxes = {op.name for op in ops if op.kind is Kind.ROW_REDUCE and op.reduce is Reduce.MAX
                 and op.name in online and op.expr.op is Op.READ and op.expr.arg[0] in raw}
        allowed += len(maxes)
        total = 0
        for op in ops:
            for e in op.exprs:
                for x in e.walk():
                    total += x.op is Op.READ and x.arg[0] in raw
                    if x.op is Op.EXP and online_max(x.src[0], online) is not None:
                        y = x.src[0].src[0]
                        allowed += y.op is Op.READ and y.arg[0] in raw
        if total and total == allowed:
            out.append(ScoreFold(sc.name, sc.scalars, frozenset(raw), frozenset(maxes)))
    return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Body:
    """Lines of one key-tile body (FAST or SLOW) of a pass."""

    def __init__(self, r: "Renderer", kpass: KernelPass, fast: bool):
        self.r, self.kpass, self.fast = r, kpass, fast
        self.lines: list[str] = []
        self.kb: dict[tuple, str] = {}      # (read, layout) -> its tile variable
        self.alpha: dict[tuple[str, str], str] = {}
        self.folds = r.folds

    def expr(self, e: Expr) -> Expr:
        if self.fast and self.kpass.mask is not None:
            e = substitute(e, self.kpass.mask, True)
        return e

    def tile(self, e: Expr) -> str:
        """A full [BLOCK_M, BLOCK_N] value of a tile expression."""
        code = self.r.printer(e, "tile")
        if deps(e, self.r.roles, self.r.printer.tiles) != {"query", "key"}:
            code = f"({code} + tl.zeros([BLOCK_M, BLOCK_N], tl.float32))"
        return code

    def bounded(self, code: str, identity: str) -> str:
        return code if self.fast else f"tl.where(mask_n[None, :], {code}, {identity})"

    def rescale(self, op: TileOp) -> str:
        factors = []
        for m, base in op.rescale:
            key = (m, base)
            if key not in self.alpha:
                var = f"alpha_{m}" if base == "exp" else f"alpha2_{m}"
                if base == "exp" and m in self.r.log2_rescaled:
                    # the tiles' own rounded maxima (expr.Printer.online_rescale)
                    code = self.r.printer.online_rescale(f"prev_{m}", f"r_{m}")
                else:
                    # prev <= m: exp2 (flushing to zero under 2**-126) with log2(e) folded
                    scale = f" * {LOG2E!r}" if base == "exp" else ""
                    code = f"tl.exp2(_sub_rule(prev_{m}, r_{m}){scale})"
                self.lines.append(f"{var} = {code}")
                self.alpha[key] = var
            factors.append(self.alpha[key])
        return " * ".join(factors)

    def cached_load(self, read: Expr, axes: dict[str, str], prefix: str) -> str:
        """A key-side tile (the score's key operand, a value read): one load for every row and
        layout (K read by a score is [d, n]; K read as a value, as dQ's backward does, is [n, d])."""
        key = (read, tuple(sorted(axes.items())))
        if key not in self.kb:
            var = f"{prefix}{len(self.kb)}"
            self.r.printer.shared = True
            code = self.r.printer.load(read, 'tile', axes, cast=False)
            desc = self.r.descriptor(read)
            if desc is not None:
                # a tensor-descriptor (TMA) load of the [BLOCK_N, BLOCK_f] block where TMA is set (launch:
                # Hopper or later, the feature dim innermost, 16-byte strides); zero past the bounds
                block = f"{desc}.load([start_n, 0])" + (".T" if axes[self.r.kp.key] == "cols" else "")
                code = f"{block} if TMA else {code}"
            self.lines.append(f"{var} = {code}")
            self.r.printer.shared = False
            self.kb[key] = var
        return self.kb[key]

    def build(self) -> list[str]:
        r, kp = self.r, self.r.kp
        pr = r.printer
        pr.key_mask = not self.fast
        pr.neg_inf = dict(r.neg_inf)
        if self.fast and self.kpass.mask is not None:
            # with the predicate true, masked scores are finite again: fewer guarded subtractions
            for op in self.kpass.loop:
                if op.kind is Kind.MAP:
                    pr.neg_inf[op.name] = inf_flags(self.expr(op.expr), pr.neg_inf)
        self.lines.append("offs_n = start_n + tl.arange(0, BLOCK_N)")
        if not self.fast:
            # EVEN_N (constexpr: size_n % BLOCK_N == 0) makes the key bound true: the compiler drops it
            self.lines.append("mask_n = (offs_n < size_n) | EVEN_N")
        for m in self.kpass.stabilisers:
            self.lines.append(f"prev_{m} = r_{m}")
        for op in self.kpass.loop:
            if op.kind is Kind.SCORE:
                kb = self.cached_load(op.key_read, {op.contract: "rows", kp.key: "cols"}, "kb")
                code = f"tl.dot({r.qa[op.query_read]}, {kb}, input_precision=DOT_PRECISION)"
                if op.name in self.folds:
                    code += f" * sk_{op.name}"
                elif not (op.scalars.op is Op.CONST and op.scalars.arg == 1.0):
                    code += f" * {pr(op.scalars, 'tile')}"
                self.lines.append(f"t_{op.name} = {code}")
            elif op.kind is Kind.MAP:
                self.lines.append(f"t_{op.name} = {self.tile(self.expr(op.expr))}")
            elif op.kind is Kind.ROW_REDUCE:
                ident = const_text(op.reduce.identity)
                val = self.bounded(self.tile(self.expr(op.expr)), ident)
                if op.reduce is Reduce.MAX:
                    tile_max = f"tl.reduce({val}, 1, _max_nan)"
                    fold = next((f for f in self.folds.values() if op.name in f.maxes), None)
                    if fold is not None:
                        tile_max += f" * sf_{fold.score}"
                    self.lines.append(f"r_{op.name} = _max_nan(r_{op.name}, {tile_max})")
                elif op.reduce is Reduce.MIN:
                    self.lines.append(f"r_{op.name} = _min_nan(r_{op.name}, tl.reduce({val}, 1, _min_nan))")
                else:
                    old = f"r_{op.name}" + (f" * {self.rescale(op)}" if op.rescale else "")
                    self.lines.append(f"r_{op.name} = {old} + tl.sum({val}, 1)")
            elif op.kind is Kind.VALUE:
                v = self.cached_load(op.value_read, {kp.key: "rows", op.value_index: "cols"}, "vb")
                p = self.bounded(self.tile(self.expr(op.weights)), "0.0")
                acc = f"r_{op.name}" + (f" * ({self.rescale(op)})[:, None]" if op.rescale else "")
                self.lines.append(f"r_{op.name} = tl.dot(({p}).to({v}.dtype), {v}, {acc}, "
                                  f"input_precision=DOT_PRECISION)")
            elif op.kind is Kind.RUNNING:
                self.lines.append(f"r_{op.name} = {r.row_value(op)}")
        return self.lines


class Renderer:
    """The tile program: one program per query tile of BLOCK_M rows and grid slice."""
    TEMPLATE = TEMPLATE
    QUERY_SPAN = "BLOCK_M"        # query rows of one row block (the decode program's differ from its rows)

    def __init__(self, kp: KernelPlan):
        self.kp = kp
        self.roles = dict(kp.roles)
        self.printer = Printer(kp.cascade, self.roles, rows=set(kp.rows), online=online_bounds(kp))
        self.neg_inf = dict(self.printer.neg_inf)
        self.qa: dict[Expr, str] = {}
        self.folds: dict[str, ScoreFold] = {}          # of the pass being rendered
        self.log2_rescaled: set[str] = set()           # of the pass being rendered
        self.descs: dict[Expr, tuple[str, str]] = {}   # key-side read -> (descriptor, its line)
        self.tma_reads: list[tuple[str, int, int]] = []   # (input, its key dim, its feature dim)
        self.fold_flags: dict[str, Expr] = {}          # FOLD_<score> -> scalars, over all passes
        self.key_blocks: dict[str, None] = {}          # KB_<param>: BLOCK_N divides that block size

    # -- pieces -------------------------------------------------------------------
    def descriptor(self, read: Expr) -> str | None:
        """The tensor descriptor of a key-side read ``X[grid.., key, feature]`` (any order of the
        subscripts; grid ones may be divided), made once per program; None for any other read."""
        name, subs = read.arg
        roles = [self.roles.get(s.index) for s in subs]
        rest = [r for r in roles if r != "grid"]
        if sorted(rest) not in (["contract", "key"], ["key", "value"]) or \
                any(s.div for s, r in zip(subs, roles) if r != "grid"):
            return None
        if read not in self.descs:
            pr = self.printer
            jk = roles.index("key")
            jf = next(j for j, r in enumerate(roles) if r in ("contract", "value"))
            f = subs[jf].index
            pr.shared = True
            base = " + ".join([f"{name}_ptr"] + [f"{pr.coord(s.index, 'row', s.div)} * stride_{name}_{j}"
                                                 for j, s in enumerate(subs) if roles[j] == "grid"])
            pr.shared = False
            var = f"desc{len(self.descs)}"
            self.descs[read] = (var, f"{var} = tl.make_tensor_descriptor({base}, shape=[size_n, SIZE_{f}], "
                                     f"strides=[stride_{name}_{jk}, 1], block_shape=[BLOCK_N, BLOCK_{f}]) "
                                     f"if TMA else 0")
            self.tma_reads.append((name, jk, jf))
        return self.descs[read][0]

    def row_ctx(self, dims) -> str:
        return "rowval" if any(self.roles.get(i) == "value" for i in dims) else "row"

    def row_value(self, op: TileOp) -> str:
        if getattr(op, "reduced", ()):
            return self.row_reduction(op)
        ctx = self.row_ctx(op.dims)
        code = self.printer(op.expr, ctx)
        varies = deps(op.expr, self.roles, set())
        want = {"query", "value"} if ctx == "rowval" else {"query"}
        if self.kp.query not in op.dims:
            want.discard("query")
        if not want <= varies:
            e = next((i for i in op.dims if self.roles.get(i) == "value"), None)
            shape = f"[BLOCK_M, BLOCK_{e}]" if ctx == "rowval" else "[BLOCK_M]"
            code = f"({code} + tl.zeros({shape}, tl.float32))"
        return code

    def row_reduction(self, op: TileOp) -> str:
        """A reduction over one value index of [BLOCK_M, BLOCK_e] row values into [BLOCK_M]
        (capabilities): the padded columns take the reduction's identity."""
        (e,) = op.reduced
        code = f"({self.printer(op.expr, 'rowval')} + tl.zeros([BLOCK_M, BLOCK_{e}], tl.float32))"
        val = f"tl.where(mask_{e}[None, :], {code}, {const_text(op.reduce.identity)})"
        if op.reduce is Reduce.SUM:
            return f"tl.sum({val}, 1)"
        return f"tl.reduce({val}, 1, {'_max_nan' if op.reduce is Reduce.MAX else '_min_nan'})"

    def atoms(self, pred: Expr):
        """(cm, cn, const code, op) per affine comparison, normalised to ``lin <= 0`` / ``lin < 0``."""
        d = atom(pred, self.kp.query, self.kp.key)
        cm, cn, const, op = d.cm, d.cn, d.const, pred.op
        if op in (Op.GE, Op.GT):
            cm, cn, const = -cm, -cn, Expr(Op.NEG, (const,))
            op = Op.LE if op is Op.GE else Op.LT
        return cm, cn, self.const(const), op

    def const(self, e: Expr) -> str:
        """A scalar (params and numbers), folded to a number when it has no params."""
        if not e.params():
            return _num(eval_scalar(e, {}))
        return self.printer(e, "row")

    @staticmethod
    def conjuncts(pred: Expr) -> list[Expr]:
        if pred.op is Op.AND:
            return Renderer.conjuncts(pred.src[0]) + Renderer.conjuncts(pred.src[1])
        return [pred]

    def intervals(self, kpass: KernelPass, view: PassView) -> bool:
        """Tile ranges from a conjunction of atoms; False if the mask is not one."""
        lines = view.bounds
        if kpass.mask is None:
            lines += ["lo = 0", "flo = 0", "fhi = (size_n // BLOCK_N) * BLOCK_N", "hi = size_n"]
            return True
        atoms = self.conjuncts(kpass.mask)
        if any(x.op not in (Op.LE, Op.LT, Op.GE, Op.GT) for x in atoms):
            return False
        parsed = [self.atoms(x) for x in atoms]
        if any(cn == 0 for _, cn, _, _ in parsed):
            return False
        lines.append("m_lo = start_m")
        lines.append(f"m_hi = tl.minimum(start_m + {self.QUERY_SPAN}, size_m) - 1")
        bound = {"hull_lo": [], "hull_hi": [], "full_lo": [], "full_hi": []}
        for k, (cm, cn, const, op) in enumerate(parsed):
            lo_m, hi_m = ("m_lo", "m_hi") if cm >= 0 else ("m_hi", "m_lo")
            # some row of the tile can satisfy the atom / every row does
            for which, mm in (("hull", lo_m), ("full", hi_m)):
                q = f"q{which[0]}{k}"
                terms = ([] if const == "0" else [f"-({const})"]) + ([] if cm == 0 else [f"{_num(-cm)} * {mm}"])
                num = " + ".join(terms) or "0"
                lines.append(f"{q} = ({num}) / {float(cn)!r}")
                if cn > 0:   # n <= q  (n < q)
                    b = f"tl.floor({q}) + 1" if op is Op.LE else f"tl.ceil({q})"
                    bound[f"{which}_hi"].append(b)
                else:        # n >= q  (n > q)
                    b = f"tl.ceil({q})" if op is Op.LE else f"tl.floor({q}) + 1"
                    bound[f"{which}_lo"].append(b)

        def fold(name, items, fn) -> bool:
            if not items:
                return False
            lines.append(f"{name} = {items[0]}")
            for it in items[1:]:
                lines.append(f"{name} = {fn}({name}, {it})")
            lines.append(f"{name} = {name}.to(tl.int32)")
            return True
        if kpass.skip_empty and fold("lo", bound["hull_lo"], "tl.maximum"):
            lines.append("lo = (tl.maximum(lo, 0) // BLOCK_N) * BLOCK_N")
        else:
            lines.append("lo = 0")
        if kpass.skip_empty and fold("hi", bound["hull_hi"], "tl.minimum"):
            lines.append("hi = tl.maximum(tl.minimum(hi, size_n), lo)")
        else:
            lines.append("hi = size_n")
        if fold("flo", bound["full_lo"], "tl.maximum"):
            lines.append("flo = tl.minimum(((tl.maximum(flo, lo) + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, hi)")
        else:
            lines.append("flo = lo")
        if not fold("fhi", bound["full_hi"], "tl.minimum"):
            lines.append("fhi = size_n")
        lines.append("fhi = tl.maximum(tl.minimum((tl.minimum(fhi, size_n) // BLOCK_N) * BLOCK_N, hi), flo)")
        view.slow_left = True
        return True

    def classify(self, kpass: KernelPass, view: PassView) -> None:
        """Per-tile flags for any affine mask: three-valued logic over the tile's corners."""
        lines = view.classify
        lines.append("n_lo = start_n")
        lines.append("n_hi = tl.minimum(start_n + BLOCK_N, size_n) - 1")
        counter = [0]

        def leaf(e: Expr) -> tuple[str, str]:
            k = counter[0]
            counter[0] += 1
            if e.op in (Op.EQ, Op.NE):
                d = atom(e, self.kp.query, self.kp.key)
                cm, cn, const, op = d.cm, d.cn, self.const(d.const), e.op
            else:
                cm, cn, const, op = self.atoms(e)
            lo = [const, f"{_num(cm)} * {'m_lo' if cm >= 0 else 'm_hi'}",
                  f"{_num(cn)} * {'n_lo' if cn >= 0 else 'n_hi'}"]
            hi = [const, f"{_num(cm)} * {'m_hi' if cm >= 0 else 'm_lo'}",
                  f"{_num(cn)} * {'n_hi' if cn >= 0 else 'n_lo'}"]
            lines.append(f"a{k}_min = {' + '.join(lo)}")
            lines.append(f"a{k}_max = {' + '.join(hi)}")
            mn, mx = f"a{k}_min", f"a{k}_max"
            if op is Op.LE:
                return f"({mx} <= 0)", f"({mn} > 0)"
            if op is Op.LT:
                return f"({mx} < 0)", f"({mn} >= 0)"
            eq = (f"(({mn} == 0) & ({mx} == 0))", f"(({mn} > 0) | ({mx} < 0))")
            return eq if op is Op.EQ else (eq[1], eq[0])

        t, f = tile_decision(kpass.mask, leaf, lambda a, b: f"({a} & {b})", lambda a, b: f"({a} | {b})")
        lines.append(f"tile_full = {t} & (start_n + BLOCK_N <= size_n)")
        lines.append(f"tile_empty = {f}")
        view.bounds += ["m_lo = start_m", f"m_hi = tl.minimum(start_m + {self.QUERY_SPAN}, size_m) - 1",
                        "lo = 0", "hi = size_n"]

    def pass_view(self, kpass: KernelPass) -> PassView:
        kp, pr = self.kp, self.printer
        view = PassView(kpass.index, skip_empty=kpass.skip_empty,
                        mask=str(kpass.mask) if kpass.mask is not None else "")
        pr.tiles = set(kpass.tiles)
        # list loops visit whole, aligned key tiles: key-block reads may load once per row
        pr.aligned = self.key_blocks if kpass.sites else None
        for op in kpass.state:
            if op.kind is Kind.ROW_REDUCE:
                view.init.append(f"r_{op.name} = tl.full([BLOCK_M], {const_text(op.reduce.identity)}, tl.float32)")
            elif op.kind is Kind.VALUE:
                view.init.append(f"r_{op.name} = tl.zeros([BLOCK_M, BLOCK_{op.value_index}], tl.float32)")
            else:
                view.init.append(f"r_{op.name} = tl.full([BLOCK_M], {NEG_INF}, tl.float32)")
        self.folds = {f.score: f for f in score_folds(kpass, pr.online)}
        self.log2_rescaled = log2_rescaled(kpass, pr.online)
        for f in self.folds.values():
            self.fold_flags[f.flag] = f.scalars
            c = pr(f.scalars, "row")
            view.init += [f"sf_{f.score} = {c} if {f.flag} else 1.0      # the scale of the raw tiles",
                          f"sk_{f.score} = 1.0 if {f.flag} else {c}      # the scale kept in the score"]
        pr.fold = {t: f"sf_{f.score}" for f in self.folds.values() for t in f.raw}
        # the printer loads each read of the rule once, before the key loop, and names it ld_*
        hoist: dict[str, str] = {}
        pr.hoist = hoist if hoist_key_free_reads(kp, kpass) else None
        view.fast = _Body(self, kpass, True).build()
        view.slow = _Body(self, kpass, False).build()
        view.after = [f"r_{op.name} = {self.row_value(op)}" for op in kpass.loop if op.kind is Kind.RUNNING]
        pr.hoist = None
        view.hoisted = [f"{var} = {code}" for code, var in hoist.items()]
        pr.tiles, pr.fold, self.folds = set(), {}, {}
        view.epilogue = [f"r_{op.name} = {self.row_value(op)}" for op in kpass.epilogue]
        if kpass.sites:                 # block-sparse: the host lists the key tiles (backends/tiles.py)
            view.mode = "lists"
            if kpass.mask is not None:
                self.classify(kpass, view)
            else:
                view.classify.append("tile_full = start_n + BLOCK_N <= size_n")
        elif not self.intervals(kpass, view):
            view.mode = "classify"
            self.classify(kpass, view)
        return view

    # -- splitting the key loop --------------------------------------------------------
    @staticmethod
    def ws_address(op: TileOp, row: str) -> str:
        """Offsets into a state's workspace for the rows ``row`` ([BLOCK_M] int64)."""
        if op.kind is Kind.VALUE:
            e = op.value_index
            return f"({row})[:, None] * BLOCK_{e} + offs_{e}[None, :]"
        return row

    def ws_stores(self, kpass: KernelPass) -> list[str]:
        out = []
        for op in kpass.state:
            mask = "mask_m[:, None]" if op.kind is Kind.VALUE else "mask_m"
            out.append(f"tl.store(ws_{op.name}_ptr + {self.ws_address(op, 'ws_row')}, r_{op.name}, mask={mask})")
        return out

    def merge_lines(self, kpass: KernelPass) -> list[str]:
        """The combine kernel's merge of the parts' states, in loop order (a merged state only reads
        states before it: stabilisers and the running values a RunningOp reads)."""
        ops = {op.name: op for op in kpass.state}
        pr, out = self.printer, []
        pr.tiles, pr.hoist = set(), None
        rescaled = log2_rescaled(kpass, pr.online)
        for mg in merges(self.kp):
            op = ops[mg.name]
            row = "s * ws_part + ws_row"
            part = f"tl.load(ws_{mg.name}_ptr + {self.ws_address(op, row)}, " \
                   f"mask={'mask_m[:, None]' if op.kind is Kind.VALUE else 'mask_m'}, other=0.0)"
            if mg.how == "recompute":
                out.append(f"r_{mg.name} = {self.row_value(op)}")
                continue
            if mg.how in ("max", "min"):
                ident = const_text(op.reduce.identity)
                out.append(f"r_{mg.name} = tl.full([BLOCK_M], {ident}, tl.float32)")
                out.append("for s in range(KV_SPLITS):")
                out.append(f"    r_{mg.name} = _{mg.how}_nan(r_{mg.name}, {part.replace('other=0.0', 'other=' + ident)})")
                continue
            shape = f"[BLOCK_M, BLOCK_{op.value_index}]" if op.kind is Kind.VALUE else "[BLOCK_M]"
            out.append(f"r_{mg.name} = tl.zeros({shape}, tl.float32)")
            out.append("for s in range(KV_SPLITS):")
            factors = []
            for m, base in mg.rescale:
                # the tile loop's correction base(m_old - m) with m_old the part's stabiliser
                fn = "tl.exp" if base == "exp" else "tl.exp2"
                m_part = f"tl.load(ws_{m}_ptr + {row}, mask=mask_m, other=0.0)"
                if base == "exp" and m in rescaled:     # as the parts' tiles rounded it
                    factors.append(pr.online_rescale(m_part, f"r_{m}"))
                else:
                    factors.append(f"{fn}(_sub_rule({m_part}, r_{m}))")
            scale = ""
            if factors:
                f = " * ".join(factors)
                scale = f" * ({f})[:, None]" if op.kind is Kind.VALUE else f" * {f}"
            out.append(f"    r_{mg.name} = r_{mg.name} + {part}{scale}")
        return out

    # -- the whole kernel ------------------------------------------------------------
    def args(self, split: bool) -> tuple[list[Arg], tuple]:
        """The kernel arguments (and, split, the workspaces: (state, its value index or None))."""
        kp, c = self.kp, self.kp.cascade
        args: list[Arg] = []
        for t in c.inputs:
            args.append(Arg(f"{t.name}_ptr", "ptr", t.name))
            args += [Arg(f"stride_{t.name}_{j}", "stride", t.name, j) for j in range(len(t.indices))]
        for o, dims in kp.outputs:          # per row: checked by the capabilities
            args.append(Arg(f"{o}_ptr", "ptr", o))
            args += [Arg(f"stride_{o}_{j}", "stride", o, j) for j in range(len(dims))]
        for i in (*kp.grid, kp.query, kp.key):
            args.append(Arg(f"size_{i}", "size", i))
        divs = {x.arg[1][j].div for s in c.stmts for x in s.expr.walk() if x.op is Op.READ
                for j in range(len(x.arg[1])) if x.arg[1][j].div}
        for p in c.params:
            args.append(Arg(f"p_{p.name}", "param", p.name, dtype="i32" if p.name in divs else "fp32"))
        if kp.tile_lists:               # [tasks] and [tasks, key tiles] int32, tasks = (grid.., query tile)
            args += [Arg("kv_count_ptr", "tiles", "count"), Arg("kv_tiles_ptr", "tiles", "tiles"),
                     Arg("stride_kv_tiles", "tiles_stride", "tiles")]
        workspaces = ()
        if split:
            workspaces = tuple((op.name, op.value_index if op.kind is Kind.VALUE else None)
                               for op in kp.passes[0].state)
            args += [Arg(f"ws_{w}_ptr", "workspace", w) for w, _ in workspaces]
        return args, workspaces

    @property
    def features(self) -> tuple[str, ...]:
        """Contraction and value indices, each once (a backward kernel's ``d`` is both: the score's
        contraction and dQ's columns)."""
        return tuple(dict.fromkeys((*self.kp.contract, *self.kp.value)))

    def constexprs(self, split: bool) -> tuple[str, ...]:
        feats = self.features
        return tuple([f"SIZE_{i}" for i in feats] + ["BLOCK_M", "BLOCK_N"] + [f"BLOCK_{i}" for i in feats]
                     + ["DOT_PRECISION", "EVEN_N", *self.fold_flags] + [f"KB_{p}" for p in self.key_blocks]
                     + (["TMA"] if self.descs else [])
                     + (["KV_SPLITS"] if split else []))

    def packed_index(self) -> str | None:
        """A grid index whose programs take ``PACK`` of its values each (the decode program's heads)."""
        return None

    def grid_lines(self) -> list[str]:
        # grid coordinates in 64 bits: (batch, head) offsets reach past 2**31 elements in large
        # tensors; offsets inside one (batch, head) slice stay 32-bit (checked at launch). A packed
        # index counts packs of PACK (``idx_<h>``: the pack's first value).
        kp, h = self.kp, self.packed_index()
        grid_lines, rest = [], "pid_g.to(tl.int64)"
        for j, g in enumerate(reversed(kp.grid)):
            size = f"size_{g}"
            if g == h:
                grid_lines.append(f"packs_{g} = (size_{g} + PACK - 1) // PACK")
                size = f"packs_{g}"
            last = j == len(kp.grid) - 1
            idx = rest if last else f"{rest} % {size}"
            if g == h:
                idx = f"{idx} * PACK" if last else f"({idx}) * PACK"
            grid_lines.append(f"idx_{g} = {idx}")
            if not last:
                grid_lines.append(f"rest_{j} = {rest} // {size}")
                rest = f"rest_{j}"
        return grid_lines

    def parts(self, split: bool) -> dict:
        """What the template lays out (every name it reads)."""
        kp, c, pr = self.kp, self.kp.cascade, self.printer
        args, workspaces = self.args(split)
        qa_lines = []
        for op in kp.scores:
            if op.query_read not in self.qa:
                var = f"qa{len(self.qa)}"
                self.qa[op.query_read] = var
                qa_lines.append(f"{var} = {pr.load(op.query_read, 'tile', {op.contract: 'cols'}, cast=False)}")
        prologue = [f"r_{op.name} = {self.row_value(op)}" for op in kp.prologue]
        passes = [self.pass_view(p) for p in kp.passes]
        descs = [line for _, line in self.descs.values()]
        stores = []
        for o, dims in kp.outputs:
            ctx = self.row_ctx(dims)
            offs = [f"{o}_ptr"] + [f"{pr.coord(i, ctx)} * stride_{o}_{j}" for j, i in enumerate(dims)]
            masks = [pr.mask_of(i, ctx) for i in dims]
            masks = [m for m in masks if m is not None]
            val = f"r_{o}"
            mask = f", mask={' & '.join(masks)}" if masks else ""
            stores.append(f"tl.store({' + '.join(offs)}, {val}.to({o}_ptr.dtype.element_ty){mask})")
        name = f"einattn_{_ident(c.name)}_kernel"
        combine_name = f"einattn_{_ident(c.name)}_combine" if split else ""
        split_parts = {"ws_stores": self.ws_stores(kp.passes[0]), "merge_lines": self.merge_lines(kp.passes[0])} \
            if split else {}
        return dict(name=name, spec=c.name, structural_hash=c.structural_hash(), args=args,
                    constexprs=self.constexprs(split), grid=kp.grid, grid_lines=self.grid_lines(), query=kp.query,
                    key=kp.key, contract=kp.contract, value=kp.value, features=self.features, qa_lines=qa_lines, descs=descs, prologue=prologue,
                    passes=passes, stores=stores, n_passes=len(passes), split=split, combine_name=combine_name,
                    workspaces=workspaces, folds=list(self.fold_flags), **split_parts)

    def render(self, split: bool = False) -> Rendered:
        kp = self.kp
        parts = self.parts(split)
        from jinja2 import Environment, StrictUndefined
        env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                          lstrip_blocks=True)
        src = env.from_string(template_source(self.TEMPLATE)).render(**parts)
        return Rendered(src, parts["name"], tuple(parts["args"]), parts["constexprs"], kp.grid, kp.query, kp.key,
                        kp.contract, kp.value, tuple(kp.outputs), parts["combine_name"], parts["workspaces"],
                        tuple(self.fold_flags.items()), tuple(self.tma_reads), tuple(self.key_blocks))


@functools.lru_cache(maxsize=4)
def template_source(which: tuple[str, str] = TEMPLATE) -> str:
    return importlib.resources.files("einattn.templates").joinpath(*which).read_text()


def template_hash() -> str:
    """A short hash of the kernel template: part of a tuning record's target fingerprint."""
    return hashlib.sha256(template_source().encode()).hexdigest()[:16]


def _ident(s: str) -> str:
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in s)
    return out if out and not out[0].isdigit() else f"k_{out}"


def render(kp: KernelPlan, split: bool = False) -> Rendered:
    """Triton source of a kernel plan, with its argument list; ``split``: the key loop in
    ``KV_SPLITS`` parts plus the combine kernel (one-pass plans, ``compiler.splits``).

    >>> from einattn.compiler import make_plan
    >>> from einattn.compiler.kernel_plan import make_kernel_plan
    >>> from einattn.specs import load_spec
    >>> r = render(make_kernel_plan(make_plan(load_spec("softmax"))))
    >>> r.kernel_name, "tl.dot" in r.source
    ('einattn_softmax_kernel', True)
    """
    return Renderer(kp).render(split)
