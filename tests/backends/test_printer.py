"""The expression printers (``backends/printer.py`` and its two targets) from one table.

Every operator of the IR prints on the CPU (TVMScript, loop and epilogue contexts)
and on Triton; the rules both targets share (the masked-row rules and where they
apply, NaN-keeping min/max, small integer powers) show up at the same places on
both; one cascade per family of operators computes what the float64 reference
computes on ``cpu`` and on ``cuda`` in Triton's interpreter.
"""
from __future__ import annotations

import math

import pytest
import torch

import einattn
from einattn.backends.cpu.expr import Ctx, lower
from einattn.backends.triton.expr import Printer
from einattn.ir import BINARY, COMPARE, FUNCTIONS, LOGIC, Expr, Op, Sub
from tests.helpers import agree, reference_outputs

LEAVES = {Op.CONST, Op.PARAM, Op.INDEX, Op.READ}
S = Expr.read("S", tuple(Sub(i) for i in "bhmn"))       # a score tile
M = Expr.read("M", tuple(Sub(i) for i in "bhm"))        # a row value
SCALE = Expr(Op.PARAM, (), "scale")
LT = Expr(Op.LT, (S, M))
GT = Expr(Op.GT, (S, Expr(Op.INDEX, (), "n")))
C = Expr.const


def example(op: Op) -> Expr:
    """``op`` over operands of the right kinds (numbers, or booleans for logic)."""
    if op is Op.RUNNING:
        return Expr(op, (M,))
    if op is Op.WHERE:
        return Expr(op, (LT, S, M))
    if op in LOGIC:
        return Expr(op, (LT,) if op is Op.NOT else (LT, GT))
    if op is Op.NEG:
        return Expr(op, (S,))
    if op.value in FUNCTIONS and FUNCTIONS[op.value][1] == 1:
        return Expr(op, (S,))
    if op in BINARY or op in COMPARE:
        return Expr(op, (S, M))
    raise AssertionError(f"no example of '{op.value}': add one to tests/backends/test_printer.py")


OPERATORS = [op for op in Op if op not in LEAVES]

# -- the two targets ------------------------------------------------------------------
SOFTMAX = einattn.load_spec("softmax")
ROLES = {"b": "grid", "h": "grid", "m": "query", "n": "key", "d": "contract", "e": "value"}


def cpu(e: Expr, flags=None, fast: bool = True) -> str:
    """All the CPU hook prints for ``e``: staging lines, then the value."""
    ctx = Ctx(coords={"b": "g_b", "h": "g_h", "m": "m0 + li", "n": "n0 + lj"},
              local={"m": "li", "__query": "li", "__key": "lj"}, lane="li", lanes=16, fast=fast,
              tiles=frozenset({"S"}), rows={"M": ("m",)}, flags=flags or {})
    low = lower(e, ctx)
    return "\n".join(low.lines + [low.value])


def triton(e: Expr, flags=None) -> str:
    pr = Printer(SOFTMAX, dict(ROLES), tiles={"S"}, rows={"M"})
    pr.neg_inf = {**pr.neg_inf, "S": (False, False), "M": (False, False), **(flags or {})}
    return pr(e, "tile")


TARGETS = {"cpu": cpu, "cpu-epilogue": lambda e, flags=None: cpu(e, flags, fast=False), "triton": triton}
OPERANDS = {"cpu": ("t_S[lj, li]", "r_M[li]"), "cpu-epilogue": ("t_S[lj, li]", "r_M[li]"),
            "triton": ("t_S", "r_M[:, None]")}


def test_the_table_has_every_operator_of_the_ir():
    assert set(OPERATORS) | LEAVES == set(Op)
    for op in OPERATORS:
        example(op)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("op", OPERATORS, ids=lambda op: op.name)
def test_every_operator_prints_with_its_operands(op, target):
    text = TARGETS[target](example(op))
    reads = {x.arg[0] for x in example(op).walk() if x.op is Op.READ}
    for name, spelled in zip("SM", OPERANDS[target]):
        if name in reads:
            assert spelled in text, f"'{op.value}' on {target} lost its operand {name}: {text}"


# -- shared rules: (expr, flags) -> which rules the printed text must hold, on every target ----------
NEG = (True, False)
RULES = [
    ("S - M", Expr(Op.SUB, (S, M)), {}, set()),
    ("S - M, S may be -inf", Expr(Op.SUB, (S, M)), {"S": NEG}, set()),
    ("S - M, both may be -inf", Expr(Op.SUB, (S, M)), {"S": NEG, "M": NEG}, {"sub"}),
    ("S - (-inf)", Expr(Op.SUB, (S, C(-math.inf))), {"S": NEG}, {"sub"}),
    ("S / M", Expr(Op.DIV, (S, M)), {}, {"div"}),
    ("S / scale", Expr(Op.DIV, (S, SCALE)), {}, set()),
    ("S / (scale - 1)", Expr(Op.DIV, (S, Expr(Op.SUB, (SCALE, C(1.0))))), {}, set()),
    ("S / 2", Expr(Op.DIV, (S, C(2.0))), {}, set()),
    ("S / 0.0", Expr(Op.DIV, (S, C(0.0))), {}, {"div"}),       # the reference: 0 / 0 = 0 here too
    ("S / -0.0", Expr(Op.DIV, (S, C(-0.0))), {}, {"div"}),
    ("S / n", Expr(Op.DIV, (S, Expr(Op.INDEX, (), "n"))), {}, {"div"}),
    ("S // M", Expr(Op.FLOORDIV, (S, M)), {}, set()),            # torch floor division: 0 // 0 = NaN
    ("S % M", Expr(Op.MOD, (S, M)), {}, set()),
    ("max(S, M)", Expr(Op.MAX, (S, M)), {}, {"nan"}),
    ("min(S, 2)", Expr(Op.MIN, (S, C(2.0))), {}, {"nan"}),
    ("relu(S)", Expr(Op.RELU, (S,)), {}, {"nan"}),
    ("S ** 3", Expr(Op.POW, (S, C(3.0))), {}, set()),
    ("S ** 2.5", Expr(Op.POW, (S, C(2.5))), {}, {"pow"}),
]
# how each target spells a rule (CPU: T.Select blends; Triton: the template's helpers)
MARKS = {
    "cpu": {"sub": '== (-T.infinity("float32")), (-T.infinity("float32"))',
            "div": "== T.float32(0.0)), T.float32(0.0),|== T.float32(0.0), T.float32(0.0),",
            "nan": "T.isnan(", "pow": "T.pow("},
    "triton": {"sub": "_sub_rule(", "div": "_div_rule(", "nan": "_nan(", "pow": "_pow("},
}
MARKS["cpu-epilogue"] = MARKS["cpu"]


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("what, e, flags, want", RULES, ids=[r[0] for r in RULES])
def test_shared_rules_apply_at_the_same_places(what, e, flags, want, target):
    text = TARGETS[target](e, flags)
    got = {rule for rule, marks in MARKS[target].items() if any(m in text for m in marks.split("|"))}
    assert got == want, f"{what} on {target}: rules {sorted(got)}, expected {sorted(want)}:\n{text}"


def test_constants_and_folding():
    for target in ("cpu", "triton"):
        texts = [TARGETS[target](C(v)) for v in (math.inf, -math.inf, math.nan, 0.5)]
        assert len(set(texts)) == 4 and "0.5" in texts[3], texts
    # Triton folds a function of a literal; a math domain error is left to the kernel (IEEE result)
    assert triton(Expr(Op.EXP2, (C(3.0),))) == "8.0"
    assert triton(Expr(Op.LOG, (C(0.0),))) == "tl.log(0.0)"


# -- numbers: one cascade per family of operators, against the float64 reference ----------------
HEAD = """einattn: 1
name: {name}
inputs: {{Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e], kb: [b, h, n], qb: [b, h, m]}}
params: {{scale: 1 / sqrt(d), c: 3.0}}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale
  - T[b,h,m,n] = {scores}
"""
SOFTMAX_TAIL = """  - M[b,h,m] max= T[b,h,m,n]
  - P[b,h,m,n] = exp(T[b,h,m,n] - M[b,h,m])
  - L[b,h,m] = P[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
outputs: [O]
"""
S_ = "S[b,h,m,n]"
FAMILIES = {
    "arithmetic": (f"{S_} * 2.5 - kb[b,h,n] / (1 + abs(kb[b,h,n])) + ({S_} // 0.5) * 0.25 + {S_} % 0.75"
                   f" + -{S_} ** 3 * 0.01 + abs({S_}) ** 1.5 + {S_} ** 2 / c", SOFTMAX_TAIL),
    # row 0 is masked entirely: (-inf) - (-inf) = -inf, then 0 / 0 = 0
    "logic": (f"where((n <= m - 2) & ~(m - n > 5) | (n == m + 1) & (m > 6) | (n >= m + 9) & (n < m + 11)"
              f" & (m != 0), {S_}, -inf)", SOFTMAX_TAIL),
    "functions": (f"exp2({S_} * 0.1) + log(1 + square({S_})) + log2(2 + abs({S_})) + sqrt(abs({S_}))"
                  f" + rsqrt(1 + square(kb[b,h,n])) + tanh({S_}) + sigmoid({S_}) + relu({S_})"
                  f" + softplus({S_}) + sign({S_}) * 0.5", SOFTMAX_TAIL),
    # a NaN in qb (row 4 of head 1) must reach that row; it is the first operand, the one
    # that TVM's T.max(a, b) (a > b ? a : b) would drop
    "min_max": (f"max(qb[b,h,m], {S_}) - min(qb[b,h,m], kb[b,h,n]) * max(kb[b,h,n], -1.0)"
                f" + min({S_}, 1.0) + relu(qb[b,h,m])", SOFTMAX_TAIL),
    # a literal 0 divisor: 0 / 0 = 0 as in the reference (the CPU refused to build it), in the key
    # loop and in the epilogue (-0.0 there: x / -0.0 = -inf for x > 0); // and % by it are IEEE's
    "zero_divisor": (f"min(relu({S_}) / 0.0, 1.0) + max(min({S_} // 0.0, 1.0), -1.0)", """\
  - A[b,h,m,e] = T[b,h,m,n] * V[b,h,n,e]
  - O[b,h,m,e] = min(relu(A[b,h,m,e]) / -0.0, -1.0)
  - R[b,h,m,e] = A[b,h,m,e] // -0.0
  - Z[b,h,m,e] = A[b,h,m,e] % 0.0
outputs: [O, R, Z]
"""),
    # x * 0.0 and x - x are NaN for x = +-inf (a key of inf below); TVM's simplifier folded both
    # to 0 on the CPU
    "times_zero": (f"{S_} * 0.0 + {S_} / c + kb[b,h,n] * -0.0 + ({S_} - {S_})", SOFTMAX_TAIL),
}
SIZES = {"b": 1, "h": 2, "m": 19, "n": 23, "d": 16, "e": 8}
COMPILE = {"cpu": {}, "cuda": {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}}}


@pytest.mark.cpu
@pytest.mark.parametrize("target", sorted(COMPILE))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_of_operators_agrees_with_the_reference(family, target):
    pytest.importorskip("tvm" if target == "cpu" else "triton")
    scores, tail = FAMILIES[family]
    text = HEAD.format(name=f"ops_{family}", scores=scores) + tail
    c = einattn.load_spec(text)
    g = torch.Generator().manual_seed(0)
    x = {t.name: torch.randn([SIZES[i] for i in t.indices], generator=g) for t in c.inputs}
    x["qb"][0, 1, 4] = float("nan")
    x["K"][0, 0, 3, 0] = float("inf")
    x["kb"][0, 1, 5] = -float("inf")
    want64 = tuple(reference_outputs(c, {k: v.double() for k, v in x.items()})[o] for o in c.outputs)
    want32 = tuple(reference_outputs(c, x, dtype=torch.float32)[o] for o in c.outputs)
    got = einattn.compile(text, target=target, **COMPILE[target])(**x)
    agree(got, want64, want32, want32, f"{family} on {target}:\n{text}")


def test_cpu_divides_by_a_literal_zero_like_the_reference():
    """Regression: ``x / 0.0`` printed as ``x * (1 / 0)`` on the CPU, which TVM refuses to
    parse (and which is NaN, not 0, for x = 0); now the 0 / 0 = 0 rule without a division.
    ``x // 0.0`` and ``x % 0.0`` were refused alike."""
    text = cpu(Expr(Op.DIV, (S, C(0.0))))
    assert "/ T.float32(0.0)" not in text and 'T.infinity("float32")' in text
    text = cpu(Expr(Op.DIV, (S, C(-0.0))), fast=False)
    assert "/ T.float32(-0.0)" not in text and '(-T.infinity("float32"))' in text
    for op in (Op.FLOORDIV, Op.MOD):
        assert "/ T.float32(0.0)" not in cpu(Expr(op, (S, C(0.0))))


FLOOR_DIV = """einattn: 1
name: floor_div
inputs: {A: [b, m, n], B: [b, m, n], Q: [b, m, d], K: [b, n, d], V: [b, n, e]}
cascade:
  - S[b,m,n] = Q[b,m,d] * K[b,n,d]
  - T[b,m,n] = A[b,m,n] // B[b,m,n] + 1000 * (A[b,m,n] % B[b,m,n]) + S[b,m,n] * 0
  - O[b,m,e] = T[b,m,n] * V[b,n,e]
outputs: [O]
"""
SPECIAL = [float("inf"), -float("inf"), 7.0, -7.0, 0.0, 5.5, -2.5, float("nan"), 3.0]


@pytest.mark.cpu
@pytest.mark.parametrize("target", sorted(COMPILE))
def test_floor_division_and_remainder_follow_torch_at_special_values(target):
    """Regression (random cascades, seed 208 of tests/cascades.py: ``S // 1`` with an infinite
    score): the kernels printed ``floor(a / b)``, which is +-inf for an infinite ``a`` where
    torch (the reference) gives NaN, and 0 where torch gives -1 for ``7 // -inf``; ``%``
    likewise (``7 % -inf`` is -inf in torch, NaN as printed)."""
    pytest.importorskip("tvm" if target == "cpu" else "triton")
    pairs = [(a, b) for a in SPECIAL for b in SPECIAL]
    a = torch.tensor([p[0] for p in pairs]).reshape(1, -1, 1)
    b = torch.tensor([p[1] for p in pairs]).reshape(1, -1, 1)
    x = dict(A=a, B=b, Q=torch.ones(1, len(pairs), 2), K=torch.ones(1, 1, 2), V=torch.ones(1, 1, 1))
    want = (a.double() // b.double() + 1000 * torch.remainder(a.double(), b.double())).flatten()
    got = einattn.compile(FLOOR_DIV, target=target, **COMPILE[target])(**x).flatten().double()
    bad = [(pairs[i], float(want[i]), float(got[i])) for i in range(len(pairs))
           if not torch.isclose(want[i], got[i], equal_nan=True)]
    assert not bad, bad
