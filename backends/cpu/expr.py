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

Semantics kept from the streaming executor (``backends/torch/evaluator.py``):
``(-inf) - (-inf) = -inf`` and ``0 / 0 = 0``, so fully masked rows give 0, never
NaN. The rules cost a compare and a blend; they are emitted only where both
operands may be infinite (``-inf`` tracking below), which keeps them out of the
hot loop of fully visible tiles.

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

from einattn.compiler.infinity import Flags, inf_flags
from einattn.ir import Expr, Op, UnsupportedError

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# 2**f on [-1/2, 1/2]: least-squares fit in relative error (max 2.2e-7 in float32)
EXP2_POLY = (1.0000001192092896, 0.6931469440460205, 0.24022121727466583, 0.05550742521882057,
             0.009675459936261177, 0.0013266970636323094)
_CMP = {Op.LT: "<", Op.LE: "<=", Op.GT: ">", Op.GE: ">=", Op.EQ: "==", Op.NE: "!="}
_NEG_INF = '(-T.infinity("float32"))'
_POS_INF = 'T.infinity("float32")'



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
        tiles: names of [key, query] tile values (buffer ``t_<name>[lj, li]``).
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
    v = p.expr(e)
    return Lowered(p.lines, p.scratch, v)


def fconst(v: float) -> str:
    if math.isnan(v):
        return 'T.float32("nan")'
    if math.isinf(v):
        return _POS_INF if v > 0 else _NEG_INF
    return f"T.float32({float(v)!r})"


class _Printer:
    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.lines: list[str] = []
        self.scratch: list[str] = []

    # -- staging ------------------------------------------------------------
    def stage(self, text: str, dtype: str = "float32") -> str:
        """Store ``text`` to a fresh scratch buffer; return the read of it."""
        if _is_simple(text):
            return text
        name = f"{self.ctx.tag}{len(self.scratch)}"
        self.scratch.append((name, dtype))
        self.lines.append(f"{name}[{self.ctx.lane}] = {text}")
        return f"{name}[{self.ctx.lane}]"

    # -- leaves -------------------------------------------------------------
    def read(self, e: Expr) -> str:
        name, subs = e.arg
        c = self.ctx
        if name in c.tiles:
            name = c.alias.get(name, name)
            return f"t_{name}[{c.local['__key']}, {c.local['__query']}]"
        if name in c.rows:
            dims = c.rows[name]
            idx = [c.local[d] for d in dims] or ["0"]
            return f"r_{name}[{', '.join(idx)}]"
        if e in c.staged:
            return f"{c.staged[e]}[{c.local['__query']}, {c.local['__key']}]"
        parts = []
        for s in subs:
            if s.index not in c.coords:
                raise UnsupportedError(f"index '{s.index}' of '{e}' is not available in this part of the CPU "
                                       f"kernel (available: {', '.join(sorted(c.coords))})")
            x = c.coords[s.index]
            parts.append(x if s.div is None else f"T.floordiv({x}, T.Cast(\"int32\", p_{s.div}))")
        return f"in_{name}[{', '.join(parts)}]"

    # -- expressions ----------------------------------------------------------
    def expr(self, e: Expr) -> str:
        op = e.op
        c = self.ctx
        if op is Op.CONST:
            return fconst(e.arg)
        if op is Op.PARAM:
            return f"p_{e.arg}"
        if op is Op.INDEX:
            return f'T.Cast("float32", {c.coords[e.arg]})'
        if op is Op.READ:
            return self.read(e)
        if op is Op.RUNNING:
            return self.read(e.src[0])
        if op is Op.WHERE:
            return f"T.Select({self.expr(e.src[0])}, {self.expr(e.src[1])}, {self.expr(e.src[2])})"
        if op in _CMP:
            return f"({self.expr(e.src[0])} {_CMP[op]} {self.expr(e.src[1])})"
        if op is Op.AND:
            return f"T.And({self.expr(e.src[0])}, {self.expr(e.src[1])})"
        if op is Op.OR:
            return f"T.Or({self.expr(e.src[0])}, {self.expr(e.src[1])})"
        if op is Op.NOT:
            return f"T.Not({self.expr(e.src[0])})"
        if op is Op.ADD:
            return f"({self.expr(e.src[0])} + {self.expr(e.src[1])})"
        if op is Op.MUL:
            return f"({self.expr(e.src[0])} * {self.expr(e.src[1])})"
        if op is Op.NEG:
            return f"(T.float32(0.0) - {self.expr(e.src[0])})"
        if op is Op.SUB:
            return self.sub(e)
        if op is Op.DIV:
            return self.div(e)
        if op in (Op.MIN, Op.MAX):
            return self.minmax("min" if op is Op.MIN else "max", self.expr(e.src[0]), self.expr(e.src[1]))
        if op is Op.FLOORDIV:
            return f"T.floor({self.div(e)})"
        if op is Op.MOD:
            a, b = self.stage(self.expr(e.src[0])), self.stage(self.expr(e.src[1]))
            return f"({a} - {b} * T.floor({a} / {b}))"
        if op is Op.POW:
            return self.pow(e)
        x = self.expr(e.src[0])
        if op is Op.RELU:
            return self.minmax("max", x, "T.float32(0.0)")
        if op is Op.ABS:
            return f"T.fabs({x})"
        if op is Op.SQUARE:
            x = self.stage(x)
            return f"({x} * {x})"
        if op is Op.SIGN:
            x = self.stage(x)
            return (f"T.Select({x} > T.float32(0.0), T.float32(1.0), "
                    f"T.Select({x} < T.float32(0.0), T.float32(-1.0), T.float32(0.0)))")
        if op is Op.SQRT:
            return f"T.sqrt({x})"
        if op is Op.RSQRT:
            return f"(T.float32(1.0) / T.sqrt({x}))"
        return self.fast_fn(op, x) if c.fast else self.exact_fn(op, x)

    def needs_sub_rule(self, e: Expr) -> bool:
        """Both sides of ``e = a - b`` may be -inf: ``(-inf) - (-inf)`` must give -inf, not NaN."""
        return inf_flags(e.src[0], self.ctx.flags)[0] and inf_flags(e.src[1], self.ctx.flags)[0]

    def sub(self, e: Expr) -> str:
        a, b = self.expr(e.src[0]), self.expr(e.src[1])
        if not self.needs_sub_rule(e):
            return f"({a} - {b})"
        a = self.stage(a)                    # (-inf) - (-inf) = -inf; (-inf) - finite = -inf
        return f"T.Select({a} == {_NEG_INF}, {_NEG_INF}, {a} - {b})"

    def div(self, e: Expr) -> str:
        a, b = self.expr(e.src[0]), self.expr(e.src[1])
        den = e.src[1]
        if not set(den.indices()) and not any(x.op in (Op.READ, Op.RUNNING) for x in den.walk()):
            # a scalar divisor: one reciprocal, hoisted out of the loops by LLVM
            return f"({a} * (T.float32(1.0) / {b}))"
        a, b = self.stage(a), self.stage(b)   # 0 / 0 = 0 (fully masked rows)
        return f"T.Select(T.And({a} == T.float32(0.0), {b} == T.float32(0.0)), T.float32(0.0), {a} / {b})"

    def pow(self, e: Expr) -> str:
        base, ex = e.src
        if ex.op is Op.CONST and ex.arg in (1.0, 2.0, 3.0, 4.0):
            x = self.stage(self.expr(base))
            return "(" + " * ".join([x] * int(ex.arg)) + ")"
        return f"T.pow({self.expr(base)}, {self.expr(ex)})"

    # -- math ---------------------------------------------------------------
    def exact_fn(self, op: Op, x: str) -> str:
        if op is Op.SOFTPLUS:
            x = self.stage(x)
            return f"({self.minmax('max', x, 'T.float32(0.0)')} + T.log1p(T.exp(T.float32(0.0) - T.fabs({x}))))"
        fn = {Op.EXP: "T.exp", Op.EXP2: "T.exp2", Op.LOG: "T.log", Op.LOG2: "T.log2",
              Op.TANH: "T.tanh", Op.SIGMOID: "T.sigmoid"}.get(op)
        if fn is None:
            raise UnsupportedError(f"function '{op.value}' is not supported by the CPU backend")
        return f"{fn}({x})"

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
            return f"({self.minmax('max', x, 'T.float32(0.0)')} + {self.log1p_small(t)})"
        if op is Op.LOG:
            return self.log(x)
        if op is Op.LOG2:
            return f"({self.log(x)} * {fconst(LOG2E)})"
        raise UnsupportedError(f"function '{op.value}' is not supported by the CPU backend")

    def minmax(self, fn: str, a: str, b: str) -> str:
        """NaN-propagating min/max (torch.minimum/maximum, the reference's rule). TVM's
        ``T.max(a, b)`` is ``a > b ? a : b``, which keeps a NaN in ``b`` but drops one in ``a``;
        ``T.isnan``, not ``a != a``, which TVM's simplifier folds to False."""
        a = self.stage(a)
        return f"T.Select(T.isnan({a}), {a}, T.{fn}({a}, {b}))"

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
        return (f"T.Select({x} > T.float32(0.0), T.Select({x} == {_POS_INF}, {_POS_INF}, {val}), "
                f"T.Select({x} == T.float32(0.0), {_NEG_INF}, T.float32(\"nan\")))")


def _is_simple(text: str) -> bool:
    """A leaf worth no staging: a name, a number or one buffer read with simple indices."""
    t = text.strip()
    if t.replace("_", "").replace(".", "").isalnum():
        return True
    if t.startswith("T.float32(") and t.count("(") == 1:
        return True
    head, _, rest = t.partition("[")
    return bool(rest) and head.replace("_", "").isalnum() and rest.count("[") == 0 and "(" not in rest
