"""The evaluator's host-side shortcuts against its plain form: one-hot maps summed by scatter
(``evaluator.one_hot`` / ``scatter_sum``) and a cascade run a slice of rows at a time
(``backends/torch/rows.py``)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import einattn
from einattn.backends.torch import evaluator
from einattn.backends.torch.evaluator import Frame, eval_stmt
from einattn.backends.torch.reference import run_reference
from einattn.backends.torch.rows import row_index, run_rows
from einattn.compiler.selection import split
from einattn.ir import bind_blocks, bind_sizes, eval_params, parse_spec
from tests.zoo import SPARSE_ZOO, sizes

pytestmark = pytest.mark.cpu

HEAD = """einattn: 1.1
name: t
inputs:
  P: [b, h, m, c]
  K: [b, h, n, d]
params:
  r: 2
  CS: 3
  SB: 8
  BS: 5
blocks:
  j: n // BS
  g: h // r
cascade:
"""
# every right side holds a where(x == e, 1.0, 0.0) the evaluator may turn into a scatter-add
ONE_HOT = [
    "A[j] = where(n // BS == j, 1.0, 0.0)",                                     # the summed index read nowhere else
    "A[b,h,j,d] = K[b,h,n,d] * where(n // BS == j, 1.0, 0.0)",                 # a tail block (n % BS != 0)
    "A[b,g,m,j] = P[b,h,m,c] * where((h // r == g) & (c * CS // SB == j), 1.0, 0.0)",  # two maps
    "A[b,h,j,d] = K[b,h,n,d] * where(n / 2 == j, 1.0, 0.0)",                   # odd n: not an integer, no term
    "A[b,h,j,d] = K[b,h,n,d] * where(j == n - 3, 1.0, 0.0)",                   # below the range
    "A[b,h,j,d] = K[b,h,n,d] * where(14 - n == j, 1.0, 0.0)",                  # past the range on both sides
    "A[b,h,j,d] = K[b,h,n,d] * where((n // BS == j) & (n > 2), 1.0, 0.0)",     # with a condition kept
    "A[b,h,j,d] = K[b,h,n,d] * where(n > j, 2.0, 1.0) * where(n // BS == j, 1.0, 0.0)",  # j read elsewhere: dense
    "A[b,h,j] = K[b,h,n,d] * where(n * d // 7 == j, 1.0, 0.0)",                # a map over two summed indices
    "A[b,g,j,d] = K[b,h,n,d] * where((h // r == g) & (n // BS == j), 1.0, 0.0) / 3",
    "A[b,g,m,j] = P[b,h,m,c] * where(c * CS // SB == j, 1.0, 0.0) * where(c // 4 == g, 1.0, 0.0)",  # one c, two maps
]


def _frame(c, x, ranges=None):
    sizes = bind_blocks(c, bind_sizes(c, {k: tuple(v.shape) for k, v in x.items()}), eval_params(c, bind_sizes(
        c, {k: tuple(v.shape) for k, v in x.items()}), None))
    full = {i: (0, n) for i, n in sizes.items()}
    return Frame({**full, **(ranges or {})}, {t.name: (x[t.name], t.indices) for t in c.inputs}, {},
                 eval_params(c, sizes, None), torch.float64)


@pytest.mark.parametrize("stmt", ONE_HOT)
@pytest.mark.parametrize("ranges", [None, {"n": (3, 17), "j": (1, 4), "m": (2, 5)}], ids=["full", "offsets"])
def test_one_hot_sums_equal_the_dense_product(stmt, ranges, monkeypatch):
    c = parse_spec(HEAD + f"  - {stmt}\noutputs: [A]\n")
    g = torch.Generator().manual_seed(0)
    x = {"P": torch.randn(2, 4, 6, 9, generator=g, dtype=torch.float64),
         "K": torch.randn(2, 4, 19, 3, generator=g, dtype=torch.float64)}
    s = c.stmts[0]
    got = eval_stmt(s, _frame(c, x, ranges))
    monkeypatch.setattr(evaluator, "one_hot", lambda s, inner: ([], inner))
    want = eval_stmt(s, _frame(c, x, ranges))
    assert got.shape == want.shape and want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_one_hot_takes_the_maps_it_can_and_keeps_the_rest():
    c = parse_spec(HEAD + "  - " + ONE_HOT[2] + "\n  - " + ONE_HOT[7].replace("A[", "B[") + "\noutputs: [A, B]\n")
    hot, rest = evaluator.one_hot(c.stmts[0], [f for f in evaluator.product_factors(c.stmts[0].expr)[0]])
    assert [x for x, _, _ in hot] == ["g", "j"] and [f.op for f in rest] == [evaluator.Op.READ]
    hot, rest = evaluator.one_hot(c.stmts[1], evaluator.product_factors(c.stmts[1].expr)[0])
    assert hot == [] and len(rest) == 3


def _sparse_inputs(name, n=150, seed=0):
    x = SPARSE_ZOO[name].make_inputs(sizes(m=n, n=n), torch.Generator().manual_seed(seed))
    return {k: v.double() for k, v in x.items()}


@pytest.mark.parametrize("name", sorted(SPARSE_ZOO))
@pytest.mark.parametrize("budget", [1, 4000])
def test_rows_equal_the_whole_cascade(name, budget):
    c = einattn.load_spec(name)
    x = _sparse_inputs(name)
    sizes = bind_sizes(c, {k: tuple(v.shape) for k, v in x.items()})
    params = eval_params(c, sizes, None)
    for part in (split(c).select, c):           # stage A, and the whole cascade (the reference target)
        xs = {t.name: x[t.name] for t in part.inputs}
        assert row_index(part, bind_blocks(c, sizes, params)) == "m"
        got = run_rows(part, xs, sizes, params, budget=budget)
        want = run_reference(part, xs, sizes, params)
        for o in part.outputs:
            torch.testing.assert_close(got[o], want[o], rtol=1e-12, atol=1e-12, msg=f"{name} {part.name} {o}")


def test_no_row_slices_where_a_statement_sums_over_rows():
    c = parse_spec(HEAD + """  - S[b,h,m,n] = P[b,h,m,c] * K[b,h,n,c]
  - T[b,h,n] = S[b,h,m,n]
  - U[b,h,m,n] = S[b,h,m,n] * T[b,h,n]
outputs: [U]
""".replace("K: [b, h, n, d]", "K: [b, h, n, c]"))
    sizes = {"b": 1, "h": 2, "m": 40, "n": 30, "c": 4, "j": 6, "g": 1, "d": 1}
    assert row_index(c, sizes) == "n"               # m is summed by T; n is not
    g = torch.Generator().manual_seed(1)
    x = {"P": torch.randn(1, 2, 40, 4, generator=g, dtype=torch.float64),
         "K": torch.randn(1, 2, 30, 4, generator=g, dtype=torch.float64)}
    params = eval_params(c, sizes, None)
    torch.testing.assert_close(run_rows(c, x, sizes, params, budget=1)["U"], run_reference(c, x, sizes, params)["U"])



@st.composite
def one_hot_stmt(draw):
    """A random sum with one-hot maps: j from an affine (floor-divided or divided) map of n, optionally g from h, an
    optional extra condition, an optional second factor over n."""
    a, off, dv = draw(st.integers(1, 3)), draw(st.integers(-4, 4)), draw(st.integers(1, 5))
    div = draw(st.sampled_from(["//", "/"]))       # n / 2 == j: only even n have a j
    e = f"(n * {a} + {off}) {div} {dv}" if off >= 0 else f"(n * {a} - {-off}) {div} {dv}"
    atoms = [draw(st.sampled_from([f"{e} == j", f"j == {e}"]))]
    grouped = draw(st.booleans())
    if grouped:
        atoms.append("h // r == g")
    if draw(st.booleans()):
        atoms.append(f"n > {draw(st.integers(0, 8))}")
    draw(st.randoms()).shuffle(atoms)
    factors = ["K[b,h,n,d]", "where(" + " & ".join(f"({x})" for x in atoms) + ", 1.0, 0.0)"]
    if draw(st.booleans()):
        factors.append(draw(st.sampled_from(["where(n < j * 4, 2.0, 1.0)", "exp(K[b,h,n,d])"])))
    lhs = "A[b,g,j,d]" if grouped else "A[b,h,j,d]"
    ranges = draw(st.sampled_from([None, {"n": (3, 17), "j": (1, 4)}, {"n": (0, 5), "j": (2, 3)}]))
    return f"{lhs} = " + " * ".join(factors), ranges


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(one_hot_stmt())
def test_random_one_hot_sums_equal_the_dense_product(case):
    stmt, ranges = case
    c = parse_spec(HEAD + f"  - {stmt}\noutputs: [A]\n")
    g = torch.Generator().manual_seed(len(stmt))
    x = {"P": torch.randn(2, 4, 6, 9, generator=g, dtype=torch.float64),
         "K": torch.randn(2, 4, 19, 3, generator=g, dtype=torch.float64)}
    s = c.stmts[0]
    got = eval_stmt(s, _frame(c, x, ranges))
    orig = evaluator.one_hot
    try:
        evaluator.one_hot = lambda s, inner: ([], inner)
        want = eval_stmt(s, _frame(c, x, ranges))
    finally:
        evaluator.one_hot = orig
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=stmt)
