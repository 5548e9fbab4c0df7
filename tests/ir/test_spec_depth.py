"""The expression depth limit: MAX_DEPTH levels parse (and run), one more is a SpecError
naming the place, the limit and the fix; docs/spec.md states the same number."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import einattn
from einattn.ir.spec import MAX_DEPTH
from tests.helpers import SOFTMAX

P_LINE = "  - P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])"
TAIL = "exp(S[b,h,m,n] - M[b,h,m])"            # 3 levels: exp, -, the reads


def _spec(rhs: str) -> str:
    return SOFTMAX.replace(P_LINE, f"  - 'P[b,h,m,n] = {rhs}'")


def _levels(kind: str, k: int) -> str:
    """A right side of exactly ``k`` levels, built four ways."""
    if kind == "chain":                  # m + m + ... + TAIL: the leftmost m sits at level k
        return " + ".join(["m"] * (k - 1) + [TAIL])
    if kind == "calls":                  # abs(abs(... m ...)) * TAIL
        return "abs(" * (k - 2) + "m" + ")" * (k - 2) + " * " + TAIL
    if kind == "negations":              # -(-(... m ...)) * TAIL
        return "-(" * (k - 2) + "m" + ")" * (k - 2) + " * " + TAIL
    if kind == "comparisons":            # m < m < ... becomes (m < m) & (m < m) & ...: one level per '<'
        return "where(" + " < ".join(["m"] * (k - 2)) + ", 1, 0) * " + TAIL
    raise ValueError(kind)


KINDS = ["chain", "calls", "negations", "comparisons"]


def test_the_limit_is_64():
    assert MAX_DEPTH == 64


@pytest.mark.parametrize("kind", KINDS)
def test_max_depth_parses(kind):
    einattn.load_spec(_spec(_levels(kind, MAX_DEPTH)))


@pytest.mark.parametrize("kind", KINDS)
def test_one_level_more_is_a_clear_spec_error(kind):
    with pytest.raises(einattn.SpecError) as info:
        einattn.load_spec(_spec(_levels(kind, MAX_DEPTH + 1)))
    e = info.value
    assert e.loc.file == "<string>" and e.loc.line == 13 and e.loc.col > 0
    assert e.what == "expression nested too deeply"
    assert e.expected == f"at most {MAX_DEPTH} levels" and e.found == f"more than {MAX_DEPTH} levels"
    assert "its own statement" in e.fix


@pytest.mark.parametrize("k", [MAX_DEPTH + 1, 150, 199, 1000])
def test_far_too_deep_is_a_spec_error_not_a_crash(k):
    # a comparison chain is flat in Python's AST: it used to build a 500-deep Expr and overflow the stack
    for rhs in (" < ".join(["m"] * k), " + ".join(["m"] * k), "-" * k + "m"):
        with pytest.raises(einattn.SpecError, match="nested too deeply|too long"):
            einattn.load_spec(_spec(f"where({rhs}, 1, 0) * {TAIL}" if "<" in rhs else f"({rhs}) * {TAIL}"))


def test_the_deepest_expression_runs():
    spec = einattn.load_spec(_spec(_levels("chain", MAX_DEPTH)))
    x = {"Q": torch.randn(1, 1, 3, 4), "K": torch.randn(1, 1, 5, 4), "V": torch.randn(1, 1, 5, 4)}
    got = einattn.compile(spec, target="streaming")(**x)
    want = einattn.compile(spec, target="reference")(**x)
    assert torch.allclose(got, want.float(), rtol=1e-4, atol=1e-5)


def test_docs_state_the_same_limit():
    text = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    stated = re.findall(r"`MAX_DEPTH` = (\d+)", text)
    assert stated and all(int(v) == MAX_DEPTH for v in stated), stated
