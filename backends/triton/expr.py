"""The one hook through which user expressions enter a Triton kernel: Expr -> Triton source.

A :class:`Printer` knows where every name lives in the kernel being rendered
(grid coordinates, query/key/value offsets, row state, tile values, params,
input pointers and strides) and prints an expression for one of three
contexts: ``tile`` ([BLOCK_M, BLOCK_N]), ``row`` ([BLOCK_M]) and ``rowval``
([BLOCK_M, BLOCK_<value>]). 1-D row values are expanded with ``[:, None]`` in
the 2-D contexts, so every printed expression broadcasts to its context.

The rules every target shares (dispatch, the masked-row rules ``(-inf) - (-inf) =
-inf`` and ``0 / 0 = 0`` and where they apply, NaN-keeping min/max, ...) are in
:mod:`einattn.backends.printer`; this module gives Triton's spellings, most of
them calls to the helpers at the top of the template (``_sub_rule``,
``_div_rule``, ``_max_nan``, ...), the loads and coordinates, and hoisting.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from einattn.backends.printer import ExprPrinter, needs_div_rule
from einattn.compiler.infinity import Flags, cascade_inf_flags
from einattn.ir import Cascade, Expr, Op, UnsupportedError

LOG2E = 1.4426950408889634

__all__ = ["NEG_INF", "Printer", "const_text", "deps", "online_max", "unwrap"]


def unwrap(e: Expr) -> Expr:
    """``e`` without its RUNNING marks (a running row value is the same variable)."""
    while e.op is Op.RUNNING:
        e = e.src[0]
    return e


def online_max(x: Expr, online: dict[str, frozenset]) -> str | None:
    """The max ``m`` when ``x`` is the online form ``y - m`` (``online[m]`` holds ``y``: m >= y), else None."""
    if x.op is not Op.SUB:
        return None
    y, m = x.src[0], unwrap(x.src[1])
    return m.arg[0] if m.op is Op.READ and m.arg[0] in online and y in online[m.arg[0]] else None


def deps(e: Expr, roles: dict[str, str], tiles: set[str]) -> set[str]:
    """Roles an expression varies along (tile values vary along query and key)."""
    out: set[str] = set()
    for x in e.walk():
        if x.op is Op.INDEX:
            out.add(roles.get(x.arg, "?"))
        elif x.op is Op.READ:
            if x.arg[0] in tiles:
                out |= {"query", "key"}
            else:
                out |= {roles.get(s.index, "?") for s in x.arg[1]}
    out.discard("grid")
    return out


@dataclass
class Printer(ExprPrinter):
    """Prints expressions of one kernel plan; ``printer(e, ctx)`` with ctx ``tile``/``row``/``rowval``.

    Attributes:
        cascade: the rewritten cascade (declarations of inputs and statements).
        roles: index name -> ``grid`` / ``query`` / ``key`` / ``contract`` / ``value``.
        tiles: names of the tile statements visible now (variables ``t_<name>``).
        rows: names of row statements (variables ``r_<name>``; [m] or [m, value]).
        hoist: when set, loads of inputs without the key index are hoisted out of
            the key loop: ``name -> code`` collected here, the expression uses ``name``.
        key_mask: print the key-bound mask on loads that carry the key index.
        neg_inf: per input and statement, (may be -inf, may be +inf); the renderer
            updates it as statements are specialised (not to be confused with the
            constant text ``NEG_INF``).
        per_row: grid indices that vary along the rows of a tile (the decode program's
            packed heads): index -> the [BLOCK_M] variable of each row's coordinate.
        shared: print a read shared by every row of the tile (the decode program's key-side
            reads): ``per_row`` indices take the first row's coordinate ``idx_<index>``.
    """
    cascade: Cascade
    roles: dict[str, str]
    tiles: set[str] = field(default_factory=set)
    rows: set[str] = field(default_factory=set)
    hoist: dict[str, str] | None = None
    aligned: dict[str, None] | None = None       # set while a pass's key loop visits aligned tiles (lists)
    key_mask: bool = True
    per_row: dict[str, str] = field(default_factory=dict)
    shared: bool = False
    # running maxima that stabilise an online softmax -> the expressions each is at least
    # (render.online_bounds): a max reduction's operand; a running max(a, b) bounds a, b and theirs
    online: dict[str, frozenset] = field(default_factory=dict)
    # tiles that hold raw products whose score scalars were folded out (render.ScoreFold):
    # tile name -> the factor variable that scales them back (1.0 where the fold is off)
    fold: dict[str, str] = field(default_factory=dict)

    TARGET = "Triton"
    FOLD_CONSTANTS = True         # literals are Python floats in the source: fold, don't compute
    OPS = {**ExprPrinter.OPS,
           Op.NEG: "(-{})", Op.NOT: "({} == 0)", Op.AND: "({} & {})", Op.OR: "({} | {})",
           Op.WHERE: "tl.where({}, {}, {})", Op.POW: "_pow({}, {})",
           Op.EXP: "tl.exp({})", Op.EXP2: "tl.exp2({})", Op.LOG: "tl.log({})", Op.LOG2: "tl.log2({})",
           Op.SQRT: "tl.sqrt({})", Op.RSQRT: "tl.rsqrt({})", Op.SIGMOID: "_sigmoid({})",
           Op.ABS: "tl.abs({})",
           # helpers of the template (exact at +-inf, log1p-accurate, ...)
           Op.TANH: "_tanh({})", Op.SOFTPLUS: "_softplus({})", Op.SIGN: "_sign({})",
           Op.SQUARE: "_square({})"}
    PRIMS = {"floor": "tl.floor({})"}

    def expr(self, e: Expr, at) -> str:
        if e.op is Op.EXP and self.online_form(e.src[0]):
            return self.online_exp(e.src[0], at)
        if e.op is Op.DIV and at != "row" and not needs_div_rule(e.src[1]) \
                and not deps(e.src[1], self.roles, self.tiles) & {"key", "value", "contract"}:
            # a tile divided by a scalar or a row value: one reciprocal per row, a multiply per element
            # (div.full.f32 is itself a reciprocal and a multiply, so the result is as close)
            return f"({self.expr(e.src[0], at)} * (1.0 / {self.expr(e.src[1], at)}))"
        return super().expr(e, at)

    def online_exp(self, x: Expr, ctx: str) -> str:
        """exp of the online form ``y - m``, ``m`` the running max of ``y``, as one FMA and an ex2:
        ``exp2(y * log2(e) - m2)`` with ``m2 = log2(e) * (0 if m == -inf else m)`` once per row.

        - exp2: ``tl.exp`` is a multiply and a non-flush-to-zero ex2 that ptxas expands to 5
          instructions; exp2 flushes results under 2**-126 to zero, harmless where the row's
          largest term is exp(0) = 1 (a max of ``y``). Where ``m`` also covers other values (a sink
          logit) and exceeds every ``y`` by more than 87, the row's terms are flushed to 0 where
          ``tl.exp`` would keep subnormals (docs/dtypes.md).
        - The masked-row rule ``(-inf) - (-inf) = -inf`` per row, not per element: ``m`` is at least
          every ``y`` of its row the kernel keeps, so ``m = -inf`` means those ``y`` are -inf (or NaN),
          and ``y - 0`` gives them the rule's -inf (NaN) at no per-element cost; columns past the key
          bound are zeroed by the reductions' key mask either way.
        - A tile of raw products (``fold``) takes its score scalars in the same FMA.
        Scores past FLT_MAX / log2(e) (about 2.4e38) overflow where ``y - m`` would not."""
        y, m = x.src
        k = repr(LOG2E)
        if y.op is Op.READ and y.arg[0] in self.fold:
            k = f"({self.fold[y.arg[0]]} * {LOG2E!r})"
        m2 = self.log2_max(self.expr(m, "row"))
        if ctx != "row":
            m2 += "[:, None]"
        return f"tl.exp2({self.expr(y, ctx)} * {k} - {m2})"

    @staticmethod
    def log2_max(m: str) -> str:
        """The row value an online exp subtracts in log2 units (-inf taken as 0, see ``online_exp``)."""
        return f"(tl.where({m} == {Printer.NEG_INF}, 0.0, {m}) * {LOG2E!r})"

    @staticmethod
    def online_rescale(old: str, new: str) -> str:
        """``exp(old - new)`` for the running max of an online exp, from the same rounded log2 values
        the exps subtracted (``log2_max``): each term then carries the same factor ``2**-eps``, ``eps``
        the rounding of ``log2_max``, which cancels in every ratio; ``old = -inf`` (nothing kept yet)
        gives 0. With FMA contraction on a GPU the exps' products are exact and ``eps`` is up to half
        an ulp of ``log2_max``: P stays in range while |max score| * log2(e) < 2**31 (fp16 P: 2**28)."""
        return f"tl.exp2({old} * {LOG2E!r} - {Printer.log2_max(new)})"

    def online_form(self, x: Expr) -> bool:
        """``x`` is ``y - m`` with ``m`` a running max at least ``y`` (so ``x <= 0``)."""
        return online_max(x, self.online) is not None

    def __post_init__(self):
        # per statement: (may be -inf, may be +inf): max reductions start at -inf, masks put it there
        self.neg_inf = cascade_inf_flags(self.cascade)
        # divisors of '//' subscripts: positive integers (checked at launch), so n // BS needs no IEEE rules
        self.positive = frozenset(x.div for s in self.cascade.stmts for e in s.expr.walk() if e.op is Op.READ
                                  for x in e.arg[1] if x.div)

    # -- coordinates ------------------------------------------------------------
    def coord(self, index: str, ctx: str, div: str | None = None, load_axis: str | None = None) -> str:
        role = self.roles.get(index)
        if role is None:
            raise UnsupportedError(f"index '{index}' has no role in the tile program (expected one of "
                                   f"{sorted(self.roles)})")
        if role == "grid":
            var = f"idx_{index}"
            if index in self.per_row and not self.shared:
                var = self.per_row[index] if ctx == "row" and load_axis is None else f"{self.per_row[index]}[:, None]"
            return var if div is None else f"({var} // p_{div})"
        if div is not None and role not in ("query", "key"):
            raise UnsupportedError(f"'{index} // {div}': only grid, query and key indices may be divided")
        if role == "query":
            var = "offs_m" if ctx == "row" else "offs_m[:, None]"
            return var if div is None else f"({var} // p_{div})"
        if role == "key":
            if ctx != "tile" and load_axis is None:
                raise UnsupportedError(f"the key index '{index}' appears outside a key tile")
            var = "offs_n[None, :]" if load_axis != "rows" else "offs_n[:, None]"
            return var if div is None else f"({var} // p_{div})"   # a key-block read, Sel[.., n // BS]
        if load_axis == "rows":         # a contraction (or value) index placed by a tile load
            return f"offs_{index}[:, None]"
        if load_axis == "cols":
            return f"offs_{index}[None, :]"
        if role == "value":
            if ctx != "rowval":
                raise UnsupportedError(f"the value index '{index}' appears in a {ctx} expression")
            return f"offs_{index}[None, :]"
        raise UnsupportedError(f"the contraction index '{index}' may appear only in a score contraction")

    def mask_of(self, index: str, ctx: str, load_axis: str | None = None) -> str | None:
        role = self.roles[index]
        if role == "grid":
            return None
        if role == "query":
            return "mask_m" if ctx == "row" else "mask_m[:, None]"
        if role == "key":
            if not self.key_mask:
                return None
            return "mask_n[:, None]" if load_axis == "rows" else "mask_n[None, :]"
        if load_axis == "rows":
            return f"mask_{index}[:, None]"
        return f"mask_{index}[None, :]"

    def load(self, read: Expr, ctx: str, load_axis: dict[str, str] | None = None, cast: bool = True) -> str:
        """``tl.load`` of an input read; ``load_axis`` places indices of score/value tiles."""
        subs = read.arg[1]
        blocked = [s.div for s in subs if s.div is not None and self.roles.get(s.index) == "key"]
        if blocked and self.aligned is not None and ctx == "tile" and not load_axis:
            # a key-block read (Sel[.., n // BS]) in a key loop over whole tiles: where BLOCK_N divides
            # BS (the constexpr KB_<BS>) the tile lies in one block, so one value per row, not a gather
            self.aligned.update(dict.fromkeys(blocked))
            row = self._load(read, ctx, None, cast, key_block=True)
            return f"({row} if {' and '.join(f'KB_{d}' for d in dict.fromkeys(blocked))} else " \
                   f"{self._load(read, ctx, None, cast)})"
        return self._load(read, ctx, load_axis, cast)

    def _load(self, read: Expr, ctx: str, load_axis, cast: bool, key_block: bool = False) -> str:
        name, subs = read.arg
        decl = self.cascade.input(name)
        offs, masks = [f"{name}_ptr"], []
        for j, s in enumerate(subs):
            ax = (load_axis or {}).get(s.index)
            if key_block and self.roles.get(s.index) == "key":
                offs.append(f"(start_n // p_{s.div}) * stride_{name}_{j}")     # the tile's block
                continue
            offs.append(f"{self.coord(s.index, ctx, s.div, ax)} * stride_{name}_{j}")
            m = self.mask_of(s.index, ctx, ax)
            if m is not None:
                masks.append(m)
        assert len(subs) == len(decl.indices)
        ptr = " + ".join(offs)
        code = f"tl.load({ptr}, mask={' & '.join(masks)}, other=0.0)" if masks else f"tl.load({ptr})"
        return f"{code}.to(tl.float32)" if cast else code

    # -- expressions ------------------------------------------------------------
    def __call__(self, e: Expr, ctx: str) -> str:
        return self.expr(e, ctx)

    p = __call__                  # the name this method had before the shared printer

    def flags(self, ctx: str) -> dict[str, Flags]:
        return self.neg_inf

    def index(self, name: str, ctx: str) -> str:
        return self.coord(name, ctx)

    # the template's helpers spell the rules in one call each
    def sub_rule(self, a: str, b: str) -> str:
        return f"_sub_rule({a}, {b})"

    def div_rule(self, a: str, b: str) -> str:
        return f"_div_rule({a}, {b})"

    def min_max(self, op: Op, a: str, b: str) -> str:
        return f"{'_min_nan' if op is Op.MIN else '_max_nan'}({a}, {b})"

    def read(self, e: Expr, ctx: str) -> str:
        name, subs = e.arg
        if self.cascade.input(name) is not None:
            has_key = any(self.roles.get(s.index) == "key" for s in subs)
            if self.hoist is not None and not has_key:
                code = self.load(e, "row" if ctx == "tile" else ctx)
                var = self.hoist.setdefault(code, f"ld_{name}_{len(self.hoist)}")
                if ctx == "tile" and any(self.roles.get(s.index) == "query" or s.index in self.per_row
                                         for s in subs):
                    return f"{var}[:, None]"
                return var
            return self.load(e, ctx)
        if name in self.tiles:
            return f"t_{name}"
        if name in self.rows:
            dims = self.cascade.stmt(name).indices
            expand = ctx != "row" and any(self.roles.get(i) == "query" for i in dims) and \
                not any(self.roles.get(i) == "value" for i in dims)
            return f"r_{name}[:, None]" if expand else f"r_{name}"
        raise UnsupportedError(f"'{name}' is read where it is not available in the Triton kernel "
                               f"(tile values live in one pass only)")


NEG_INF = Printer.NEG_INF


def const_text(v: float) -> str:
    return Printer.const(v)
