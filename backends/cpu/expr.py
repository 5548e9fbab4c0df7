"""The one hook of the CPU template: a cascade expression printed as TIR (TVMScript) text.

``lower(expr, ctx)`` turns an :class:`~einattn.ir.Expr` into a list of staging
statements and a final expression, for the body of one vectorised loop of the
kernel template. Everything the user wrote in a spec reaches the kernel through
this function; the template itself only loops over plan flags.

Why staging: TVMScript let-bindings inside ``T.vectorized`` loops silently
produce wrong values on TVM 0.27 (checked), so a value used more than once (the
argument of the polynomial ``exp2``, ``x`` in ``x * x``) is stored to a small
scratch buffer indexed by the loop's lane variable and read back. LLVM forwards
the store to the loads and deletes the scratch buffer, so staging is free.

The rules every target shares (dispatch, the masked-row rules ``(-inf) - (-inf) =
-inf`` and ``0 / 0 = 0`` and where they apply, NaN-keeping min/max, ...) are in
:mod:`einattn.backends.printer`; this module gives TVMScript's spellings, the
leaves, staging and the fast math below.

Math in loop contexts (``ctx.fast``) is vectorisable polynomial code: TVM lowers
``T.exp`` to scalar ``expf`` calls. ``exp2`` is a degree-6 polynomial on the
fraction (max relative error 1.0e-7) times ``2**floor(x)`` built by integer shift
and reinterpret; ``exp``, ``tanh``, ``sigmoid`` and ``softplus`` are built on it.
Epilogue contexts use TVM's accurate intrinsics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from einattn.backends.printer import ExprPrinter, needs_sub_rule
from einattn.compiler.infinity import Flags, inf_flags
from einattn.ir import Expr, Op, UnsupportedError

# inf_flags: re-exported for render.py
__all__ = ["STORAGE", "Ctx", "Lowered", "fconst", "inf_flags", "input_ref", "load_text", "lower", "store_text"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# 2**f on [-1/2, 1/2]: least-squares fit in relative error (max 2.2e-7 in float32)
EXP2_POLY = (1.0000001192092896, 0.6931469440460205, 0.24022121727466583, 0.05550742521882057,
             0.009675459936261177, 0.0013266970636323094)


@dataclass(frozen=True)
class Ctx:
    """Where an expression is printed.

    Attributes:
        coords: integer coordinate text of each index (``m -> "m0 + li"``), for
            reads of input tensors and for ``INDEX`` leaves.
        local: coordinate of each index inside the kernel's local buffers
            (``m -> "li"``, ``n -> "lj"``, ``e -> "le"``).
        lane: the vectorised loop variable (scratch buffers are indexed by it).
        lanes: the extent of that loop (the scratch buffers' length).
        fast: polynomial math (loop contexts) instead of TVM's intrinsics.
        tiles: names of [key, query] tile values (buffer ``t_<name>[lj, li]``; ``[li, lj]``
            with ``rows_first``, the decode program's layout).
        alias: tile values that are another tile in this context (a mask that is
            true on the whole tile turns ``where(p, S, -inf)`` into ``S``).
        staged: input reads copied to a local [query, key] tile first (``x_k[li, lj]``):
            inputs whose rows run along the key index, which a loop vectorised over
            queries would otherwise gather element by element.
        rows: row values -> their non-grid dims (buffer ``r_<name>[...]``).
        flags: which named values may be -inf / +inf.
        mask: ``(predicate, truth)`` to substitute (a fully visible tile), or None.
        tag: prefix of scratch buffer names (unique per call site).
    """
    coords: Mapping[str, str]
    local: Mapping[str, str]
    lane: str
    lanes: int
    fast: bool
    tiles: frozenset = frozenset()
    alias: Mapping[str, str] = field(default_factory=dict)
    staged: Mapping[Expr, str] = field(default_factory=dict)
    rows: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    flags: Mapping[str, Flags] = field(default_factory=dict)
    mask: tuple[Expr, bool] | None = None
    tag: str = "s"
    rows_first: bool = False       # tiles are t_X[row, key] (the decode program) instead of [key, row]
    loads: Mapping[str, str] = field(default_factory=dict)   # input -> its dtype where not float32


@dataclass
class Lowered:
    """``lines``: staging statements (``buf[lane] = text``) to emit first, in order;
    ``scratch``: the ``(name, dtype)`` buffers they use (``(lanes,)``, local); ``value``."""
    lines: list[str]
    scratch: list[tuple[str, str]]
    value: str


def lower(e: Expr, ctx: Ctx) -> Lowered:
    """Print ``e`` for one lane of a vectorised loop in ``ctx`` (the template's hook)."""
    if ctx.mask is not None:
        from einattn.compiler.masks import substitute
        e = substitute(e, *ctx.mask)
    p = _Printer(ctx)
    v = p.expr(e, ctx)
    return Lowered(p.lines, p.scratch, v)


# -- storage dtypes ---------------------------------------------------------------------
# bf16 tensors reach the kernel as their uint16 bit patterns (TVM 0.27 legalises bfloat16 values
# to fp32 arithmetic and to uint16 storage, which keeps the dot-product intrinsic from them):
# a load widens by shifting into the high half of an fp32, a store rounds to nearest even with
# integer operations (NaN kept quiet). fp16 is TVM's float16: LLVM converts it with F16C.
STORAGE = {"float32": "float32", "bfloat16": "uint16", "float16": "float16"}


def input_ref(e: Expr, coords: Mapping[str, str]) -> str:
    """TIR text of the stored element (not widened: ``load_text``) of the input read ``e`` at the
    integer ``coords`` of its indices."""
    name, subs = e.arg
    parts = []
    for s in subs:
        if s.index not in coords:
            raise UnsupportedError(f"index '{s.index}' of '{e}' is not available in this part of the CPU "
                                   f"kernel (available: {', '.join(sorted(coords))})")
        x = coords[s.index]
        parts.append(x if s.div is None else f"T.floordiv({x}, T.Cast(\"int32\", p_{s.div}))")
    return f"in_{name}[{', '.join(parts)}]"


def load_text(dtype: str, x: str) -> str:
    """TIR text of the fp32 value of the element ``x`` of a ``dtype`` tensor."""
    if dtype == "bfloat16":
        return f'T.reinterpret("float32", T.shift_left(T.Cast("uint32", {x}), T.uint32(16)))'
    return f'T.Cast("float32", {x})' if dtype == "float16" else x


def store_text(dtype: str, x: str) -> str:
    """TIR text of the fp32 value ``x`` (a buffer element: it is read more than once) rounded to
    ``dtype``'s storage."""
    if dtype == "bfloat16":
        u = f'T.reinterpret("uint32", {x})'
        rne = f"T.shift_right({u} + T.uint32(32767) + T.bitwise_and(T.shift_right({u}, T.uint32(16)), T.uint32(1)), T.uint32(16))"
        return f'T.Select(T.isnan({x}), T.uint16(32704), T.Cast("uint16", {rne}))'
    return f'T.Cast("float16", {x})' if dtype == "float16" else x


def fconst(v: float) -> str:
    return _Printer.const(v)


class _Printer(ExprPrinter):
    """TVMScript spellings; ``at`` is the :class:`Ctx` (the same as ``self.ctx``)."""
    TARGET = "CPU"
    NUMBER = "T.float32({!r})"
    INF = 'T.infinity("float32")'
    NEG_INF = '(-T.infinity("float32"))'
    NAN = 'T.float32("nan")'
    OPS = {**ExprPrinter.OPS,
           Op.NEG: "(T.float32(0.0) - {})", Op.NOT: "T.Not({})", Op.AND: "T.And({}, {})",
           Op.OR: "T.Or({}, {})", Op.WHERE: "T.Select({}, {}, {})", Op.POW: "T.pow({}, {})",
           Op.ABS: "T.fabs({})", Op.SQRT: "T.sqrt({})",
           # TVM's intrinsics, for epilogue contexts; loop contexts use the polynomials below
           Op.EXP: "T.exp({})", Op.EXP2: "T.exp2({})", Op.LOG: "T.log({})", Op.LOG2: "T.log2({})",
           Op.TANH: "T.tanh({})", Op.SIGMOID: "T.sigmoid({})"}
    # T.max(a, b) is `a > b ? a : b`, which keeps a NaN in b but drops one in a (hence the
    # isnan select of min_max); T.isnan, not a != a, which TVM's simplifier folds to False
    PRIMS = {"floor": "T.floor({})", "isnan": "T.isnan({})", "min": "T.min({}, {})",
             "max": "T.max({}, {})"}

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.lines: list[str] = []
        self.scratch: list[tuple[str, str]] = []

    # -- staging ------------------------------------------------------------
    def stage(self, text: str, dtype: str = "float32") -> str:
        """Store ``text`` to a fresh scratch buffer; return the read of it."""
        if _is_simple(text):
            return text
        name = f"{self.ctx.tag}{len(self.scratch)}"
        self.scratch.append((name, dtype))
        self.lines.append(f"{name}[{self.ctx.lane}] = {text}")
        return f"{name}[{self.ctx.lane}]"

    def reuse(self, text: str) -> str:
        return self.stage(text)

    # -- leaves -------------------------------------------------------------
    def flags(self, at: Ctx) -> Mapping[str, Flags]:
        return at.flags

    def index(self, name: str, at: Ctx) -> str:
        return f'T.Cast("float32", {at.coords[name]})'

    def read(self, e: Expr, c: Ctx) -> str:
        name, subs = e.arg
        if name in c.tiles:
            name = c.alias.get(name, name)
            ij = (c.local['__query'], c.local['__key']) if c.rows_first else (c.local['__key'], c.local['__query'])
            return f"t_{name}[{ij[0]}, {ij[1]}]"
        if name in c.rows:
            dims = c.rows[name]
            idx = [c.local[d] for d in dims] or ["0"]
            return f"r_{name}[{', '.join(idx)}]"
        if e in c.staged:
            return f"{c.staged[e]}[{c.local['__query']}, {c.local['__key']}]"
        return load_text(c.loads.get(name, "float32"), input_ref(e, c.coords))

    # -- what differs from the shared rules -----------------------------------
    def sub(self, e: Expr, at: Ctx) -> str:
        if e.src[0] != e.src[1]:
            return super().sub(e, at)
        # x - x: TVM's simplifier folds it to 0, IEEE gives NaN for x = +-inf or NaN (and the
        # masked-row rule -inf for x = -inf where it applies)
        x = self.stage(self.expr(e.src[0], at))
        rest = self.where(f"{x} == {self.NEG_INF}", self.NEG_INF, self.NAN) \
            if needs_sub_rule(e, self.flags(at)) else self.NAN
        return self.where(f"T.isfinite({x})", self.const(0.0), rest)

    def scalar_div(self, a: str, b: str) -> str:
        # one reciprocal, hoisted out of the loops by LLVM
        return f"({a} * (T.float32(1.0) / {b}))"

    # TVM refuses a division by a literal zero when it parses the kernel ("Divide by zero"),
    # so a / +-0 is printed as a * +-inf: the same under IEEE rules (0 and NaN give NaN, inf stays)
    def over_zero(self, a: str, zero: float) -> str:
        return f"{a} * {self.INF if math.copysign(1.0, zero) > 0 else self.NEG_INF}"

    def quotient(self, a: str, b: str, den: Expr) -> str:
        return self.over_zero(a, den.arg) if _is_zero(den) else super().quotient(a, b, den)

    def remainder(self, a: str, b: str, num: Expr, den: Expr) -> str:
        if _is_zero(den):
            return self.NAN                   # x % 0 (TVM folds the 0 * inf of the general form to 0)
        return super().remainder(a, b, num, den)

    def div_by_zero(self, a: str, b: str, zero: float) -> str:
        a = self.stage(a)                     # and 0 / 0 = 0
        return self.where(f"{a} == {self.const(0.0)}", self.const(0.0), self.over_zero(a, zero))

    def apply(self, op: Op, args: list[str], e: Expr, at: Ctx) -> str:
        if op is Op.MUL and any(_is_zero(x) for x in e.src):
            # TVM's simplifier folds x * 0.0 to 0.0, but under IEEE (the reference's rule) it is
            # NaN for x = +-inf or NaN: print the product as a select the simplifier leaves alone
            j = 0 if _is_zero(e.src[1]) else 1          # the operand that is not the zero
            x = self.stage(args[j])
            sign = f"(T.float32(-1.0) * {x})" if math.copysign(1.0, e.src[1 - j].arg) < 0 else x
            return f'T.Select(T.isfinite({x}), T.copysign(T.float32(0.0), {sign}), T.float32("nan"))'
        if at.fast and op in (Op.EXP, Op.EXP2, Op.TANH, Op.SIGMOID, Op.SOFTPLUS, Op.LOG, Op.LOG2):
            return self.fast_fn(op, args[0])
        if op is Op.SOFTPLUS:   # max(x, 0) + log1p(exp(-|x|)): TVM has no softplus
            x = self.stage(args[0])
            return f"({self.min_max(Op.MAX, x, 'T.float32(0.0)')} + T.log1p(T.exp(T.float32(0.0) - T.fabs({x}))))"
        return super().apply(op, args, e, at)

    # -- math ---------------------------------------------------------------
    def fast_fn(self, op: Op, x: str) -> str:
        if op is Op.EXP:
            return self.exp2(f"({x} * {fconst(LOG2E)})")
        if op is Op.EXP2:
            return self.exp2(x)
        if op is Op.TANH:       # 1 - 2 / (e^(2x) + 1): exact limits +-1, abs error ~1e-7 near 0
            t = self.exp2(f"({x} * {fconst(2 * LOG2E)})")
            return f"(T.float32(1.0) - T.float32(2.0) / ({t} + T.float32(1.0)))"
        if op is Op.SIGMOID:
            t = self.exp2(f"({x} * {fconst(-LOG2E)})")
            return f"(T.float32(1.0) / (T.float32(1.0) + {t}))"
        if op is Op.SOFTPLUS:   # max(x, 0) + log1p(exp(-|x|))
            x = self.stage(x)
            t = self.exp2(f"(T.fabs({x}) * {fconst(-LOG2E)})")
            return f"({self.min_max(Op.MAX, x, 'T.float32(0.0)')} + {self.log1p_small(t)})"
        if op is Op.LOG:
            return self.log(x)
        assert op is Op.LOG2, op
        return f"({self.log(x)} * {fconst(LOG2E)})"

    def exp2(self, x: str) -> str:
        """2**x as 2**(k-1) * (2 poly(x - k)), k = round(x), with x clamped to [-126, 128] by
        ``T.min(128, x)`` and ``T.max(-126, c)``: constant first, so the ``a < b ? a : b`` that TVM
        emits (one vminps / vmaxps) returns x when x is NaN. Exact at the ends:
        -inf gives 0 (the exponent field 0 times a finite), x >= 128 and +inf give +inf
        (2**127 times 2 poly(0) overflows), NaN stays NaN (the polynomial of NaN)."""
        c = self.stage(f"T.max(T.float32(-126.0), T.min(T.float32(128.0), {x}))")
        fl = self.stage(f"T.nearbyint({c})")
        f = self.stage(f"({c} - {fl})")
        poly = fconst(2 * EXP2_POLY[-1])
        for k in reversed(EXP2_POLY[:-1]):
            poly = f"({poly} * {f} + {fconst(2 * k)})"
        pw = f'T.reinterpret("float32", T.shift_left(T.Cast("int32", {fl}) + 126, 23))'
        return f"({pw} * {poly})"

    def log1p_small(self, z: str) -> str:
        """log(1 + z) for z in [0, 1]: 2 atanh(t), t = z / (2 + z) <= 1/3 (abs error < 3e-8)."""
        z = self.stage(z)
        t = self.stage(f"({z} / (T.float32(2.0) + {z}))")
        t2 = self.stage(f"({t} * {t})")
        poly = fconst(1.0 / 13)
        for k in (11, 9, 7, 5, 3, 1):
            poly = f"({poly} * {t2} + {fconst(1.0 / k)})"
        return f"(T.float32(2.0) * {t} * {poly})"

    def log(self, x: str) -> str:
        """Natural log: exponent from the bits, mantissa in [sqrt(1/2), sqrt(2)), atanh series."""
        x = self.stage(x)
        xi = f'T.reinterpret("int32", {x})'
        k = self.stage(f"T.shift_right({xi} - 1060439283, 23)", "int32")    # 0x3f3504f3 = bits of sqrt(1/2)
        m = self.stage(f'T.reinterpret("float32", {xi} - T.shift_left({k}, 23))')   # in [sqrt(1/2), sqrt(2))
        t = self.stage(f"(({m} - T.float32(1.0)) / ({m} + T.float32(1.0)))")
        t2 = self.stage(f"({t} * {t})")
        poly = fconst(1.0 / 11)
        for j in (9, 7, 5, 3, 1):
            poly = f"({poly} * {t2} + {fconst(1.0 / j)})"
        val = f'(T.Cast("float32", {k}) * {fconst(LN2)} + T.float32(2.0) * {t} * {poly})'
        return (f"T.Select({x} > T.float32(0.0), T.Select({x} == {self.INF}, {self.INF}, {val}), "
                f"T.Select({x} == T.float32(0.0), {self.NEG_INF}, T.float32(\"nan\")))")


def _is_zero(e: Expr) -> bool:
    return e.op is Op.CONST and e.arg == 0.0


def _is_simple(text: str) -> bool:
    """A leaf worth no staging: a name, a number or one buffer read with simple indices."""
    t = text.strip()
    if t.replace("_", "").replace(".", "").isalnum():
        return True
    if t.startswith("T.float32(") and t.count("(") == 1:
        return True
    head, _, rest = t.partition("[")
    return bool(rest) and head.replace("_", "").isalnum() and rest.count("[") == 0 and "(" not in rest
