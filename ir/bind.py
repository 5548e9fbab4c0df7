"""Binding a cascade to concrete sizes and param values (pure Python, no torch)."""
from __future__ import annotations

import math

from .cascade import Cascade
from .errors import Loc, SpecError
from .expr import Expr, Op
from .verify import renamed_reads

_FN = {Op.EXP: math.exp, Op.EXP2: lambda x: 2.0 ** x, Op.LOG: math.log, Op.LOG2: math.log2,
       Op.SQRT: math.sqrt, Op.RSQRT: lambda x: 1 / math.sqrt(x), Op.TANH: math.tanh,
       Op.SIGMOID: lambda x: 1 / (1 + math.exp(-x)), Op.RELU: lambda x: max(x, 0),
       Op.SOFTPLUS: lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0), Op.ABS: abs,
       Op.SIGN: lambda x: (x > 0) - (x < 0), Op.SQUARE: lambda x: x * x, Op.NEG: lambda x: -x}
_BIN = {Op.ADD: lambda a, b: a + b, Op.SUB: lambda a, b: a - b, Op.MUL: lambda a, b: a * b,
        Op.DIV: lambda a, b: a / b, Op.FLOORDIV: lambda a, b: a // b, Op.MOD: lambda a, b: a % b,
        Op.POW: lambda a, b: a ** b, Op.MIN: min, Op.MAX: max}


def bind_sizes(c: Cascade, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Sizes of every index from the input shapes; disagreements name both inputs."""
    sizes: dict[str, tuple[int, str]] = {}
    for t in c.inputs:
        shape = tuple(shapes[t.name])
        if len(shape) != len(t.indices):
            raise SpecError(f"input '{t.name}' has {len(shape)} dimensions", loc=t.loc,
                            expected=f"{len(t.indices)} ([{', '.join(t.indices)}])", found=f"shape {list(shape)}")
        for i, n in zip(t.indices, shape):
            if i in sizes and sizes[i][0] != n:
                n0, who = sizes[i]
                raise SpecError(f"inputs disagree on dim '{i}'", loc=t.loc,
                                expected=f"{n0} (from '{who}')", found=f"{n} in '{t.name}' (shape {list(shape)})",
                                fix=f"make '{who}' and '{t.name}' agree on '{i}'")
            sizes[i] = (int(n), t.name)
    for s, name, want, got in renamed_reads(c):
        if got in sizes and sizes[got][0] != sizes[want][0]:
            raise SpecError(f"'{s.name}' reads input '{name}' along '{got}' at its dim '{want}', whose sizes "
                            f"differ", loc=s.loc or Loc(c.file), expected=f"'{want}' = '{got}' = {sizes[got][0]} "
                            f"(from '{sizes[got][1]}')", found=f"'{want}' = {sizes[want][0]} in '{name}'",
                            fix=f"pass '{name}' with {sizes[got][0]} entries along '{want}' (slice or pad it)")
    return {i: n for i, (n, _) in sizes.items()}


def _apply(op: Op, args: list):
    fn = _FN.get(op) or _BIN.get(op)
    if fn is None:
        raise ValueError(f"'{op.value}' has no numeric value")
    v = fn(*args)
    if isinstance(v, complex):
        raise ValueError("the result is a complex number")
    return v


def eval_scalar(e: Expr, params: dict, sizes: dict | None = None) -> float:
    """The value of a tile-free expression of constants, params and sizes (a score's scalars).
    A math error (ValueError, ZeroDivisionError, OverflowError) propagates."""
    if e.op is Op.CONST:
        return e.arg
    if e.op is Op.PARAM:
        return params[e.arg]
    if e.op is Op.INDEX and sizes is not None:
        return sizes[e.arg]
    return _apply(e.op, [eval_scalar(x, params, sizes) for x in e.src])


def eval_params(c: Cascade, sizes: dict[str, int], overrides: dict | None = None) -> dict[str, float]:
    """Values of every param: overrides first, then the spec's expressions."""
    overrides = dict(overrides or {})
    known = {p.name: p for p in c.params}
    for k in overrides:
        if k not in known:
            raise SpecError(f"unknown param '{k}'", loc=Loc(c.file),
                            expected="one of: " + (", ".join(known) or "(this spec has no params)"))
    values: dict[str, float] = {}

    def ev(e: Expr, owner: str):
        if e.op is Op.CONST:
            return e.arg
        if e.op is Op.INDEX:
            return sizes[e.arg]
        if e.op is Op.PARAM:
            return get(e.arg)
        args = [ev(s, owner) for s in e.src]
        try:
            return _apply(e.op, args)
        except (ValueError, ZeroDivisionError, OverflowError, TypeError) as err:
            raise SpecError(f"param '{owner}' cannot be evaluated", loc=known[owner].loc,
                            found=f"{err} in '{e}' with sizes {sizes}") from None

    def get(name: str):
        if name not in values:
            if name in overrides:
                v = overrides[name]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SpecError(f"override of param '{name}' must be a number", loc=Loc(c.file),
                                    found=repr(v))
                values[name] = v
            else:
                values[name] = ev(known[name].expr, name)
        return values[name]

    for p in c.params:
        get(p.name)
    return values


def bind_blocks(c: Cascade, sizes: dict[str, int], params: dict) -> dict[str, int]:
    """``sizes`` with every block index (spec v1.1): ceil(size(index) / size). The block size must
    be a positive integer at the call."""
    out = dict(sizes)
    for b in c.blocks:
        bs = params[b.size]
        if isinstance(bs, bool) or not float(bs).is_integer() or bs < 1:
            raise SpecError(f"block size '{b.size}' of block index '{b.name}' must be a positive integer",
                            loc=b.loc or Loc(c.file), found=repr(bs), fix=f"set {b.size} to 64, 512, ...")
        out[b.name] = -(-sizes[b.index] // int(bs))
    return out
