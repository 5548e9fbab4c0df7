"""The normalising rewrites (compiler/normalize.py, and fold_identities): table-driven.

Each form fires its rewrite, the rewritten cascade equals the original under the float64
reference (random inputs, masked rows, NaN and +-inf in the score inputs), the kernel plan
accepts it, and the cpu kernel and the Triton kernel (interpreter) match the reference.
Each rewrite also has forms it must leave alone.
"""
from __future__ import annotations

import re

import pytest
import torch

import einattn
from einattn.compiler import make_kernel_plan, make_plan
from einattn.compiler.normalize import finite_only_inputs
from einattn.ir import UnsupportedError
from tests.helpers import assert_rel_close, ieee_mismatch, reference_outputs

TRITON = {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}}

INPUTS = {"Q": "b,h,m,d", "K": "b,h,n,d", "Q2": "b,h,m,d", "K2": "b,h,n,d", "V": "b,h,n,e",
          "V2": "b,h,n,e", "Qb": "b,h,m,r", "Kb": "b,h,n,r", "B": "b,h,m,n", "G": "b,h,m,e"}
SIZES = dict(b=1, h=2, m=9, n=13, d=4, e=3, r=2)
SCORE = "S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale"
VIS = "C[b,h,m] = where(n <= m - 3, 1.0, 0.0)"          # rows m < 3 see no key: masked rows


def spec(*lines: str, outputs: str = "O") -> str:
    used = [x for x in INPUTS if re.search(rf"\b{x}\[", " ".join(lines))]
    return ("einattn: 1\nname: norm\ninputs:\n" + "".join(f"  {x}: [{INPUTS[x]}]\n" for x in used)
            + "params:\n  scale: 1 / sqrt(d)\n  c: 3.0\ncascade:\n" + "".join(f"  - {s}\n" for s in lines)
            + f"outputs: [{outputs}]\n")


# name -> (the rewrites that fire, in order; spec)
FIRES = {
    # 1. a value read inside where
    "where_value": (("pull_value_reads",), spec(
        SCORE, VIS, "U[b,h,m,e] = where(n <= m - 3, V[b,h,n,e], 0.0)",
        "A[b,h,m,e] = sigmoid(S[b,h,m,n]) * V2[b,h,n,e]",
        "O[b,h,m,e] = A[b,h,m,e] + U[b,h,m,e] / C[b,h,m]")),
    "where_value_else": (("pull_value_reads", "defer_normalization"), spec(
        SCORE, VIS, "O[b,h,m,e] = where(n > m - 3, 0.0, sigmoid(S[b,h,m,n]) * V[b,h,n,e]) / C[b,h,m]")),
    "where_product": (("pull_value_reads",), spec(
        SCORE, "O[b,h,m,e] = where(n <= m, sigmoid(S[b,h,m,n]) * (V[b,h,n,e] * c), 0.0)")),
    "where_nested": (("pull_value_reads", "gather_scalars"), spec(
        SCORE, "P[b,h,m,n] = exp(S[b,h,m,n])",
        "O[b,h,m,e] = P[b,h,m,n] * where(n <= m, where(n > m - 4, V[b,h,n,e], 0.0) * 0.5, 0.0)")),
    "where_sum": (("pull_value_reads", "split_value_sum"), spec(
        SCORE, "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * where(n <= m, V[b,h,n,e] + V2[b,h,n,e], 0.0)")),
    # 2. a value contraction over a sum
    "value_sum": (("split_value_sum",), spec(
        SCORE, "P[b,h,m,n] = sigmoid(S[b,h,m,n])",
        "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] + P[b,h,m,n] * V2[b,h,n,e]")),
    "value_factored": (("name_value_operands", "defer_normalization", "online_rescaling"), spec(
        SCORE, "M[b,h,m] max= S[b,h,m,n]", "P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])", "L[b,h,m] = P[b,h,m,n]",
        "O[b,h,m,e] = P[b,h,m,n] * (V[b,h,n,e] + V2[b,h,n,e]) / L[b,h,m]")),
    "value_reads_summed": (("split_value_sum",), spec(
        SCORE, "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e] - where(n <= m, 0.5, 0.0) * V2[b,h,n,e] * c")),
    "value_nested_sum": (("split_value_sum",), spec(
        SCORE, "P[b,h,m,n] = sigmoid(S[b,h,m,n])",
        "O[b,h,m,e] = P[b,h,m,n] * (V[b,h,n,e] + V2[b,h,n,e]) + P[b,h,m,n] * P[b,h,m,n] * V[b,h,n,e]")),
    # 3. scalars scattered over the factors
    "scalars": (("gather_scalars",), spec(
        "S[b,h,m,n] = (Q[b,h,m,d] * 2) * (K[b,h,n,d] * scale)", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")),
    "scalars_nested": (("gather_scalars",), spec(
        "S[b,h,m,n] = 0.5 * (Q[b,h,m,d] * (K[b,h,n,d] * c)) / scale",
        "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * (2 * V[b,h,n,e])")),
    # 4. negated scores
    "negated": (("fold_identities", "gather_scalars"), spec(
        "S[b,h,m,n] = -Q[b,h,m,d] * K[b,h,n,d] * scale", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")),
    "zero_minus": (("fold_identities", "gather_scalars"), spec(
        "S[b,h,m,n] = (0 - Q[b,h,m,d]) * K[b,h,n,d] * scale", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")),
    # 5. a score contraction over a sum (same contracted index)
    "score_sum": (("split_score_sum",), spec(
        "S[b,h,m,n] = (Q[b,h,m,d] * K[b,h,n,d] + Q2[b,h,m,d] * K2[b,h,n,d]) * scale",
        "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")),
    "score_difference": (("split_score_sum", "defer_normalization", "online_rescaling"), spec(
        "S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale - Q2[b,h,m,d] * K2[b,h,n,d] / c",
        "M[b,h,m] max= S[b,h,m,n]", "P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])", "L[b,h,m] = P[b,h,m,n]",
        "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]")),
    # a term missing a summed index is summed over it too (docs/spec.md): times its size, a param
    "value_sum_missing_key": (("split_value_sum",), spec(
        SCORE, "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e] + G[b,h,m,e]")),
    "flashbias_as_written": (("split_score_sum",), spec(
        "S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] + Qb[b,h,m,r] * Kb[b,h,n,r]",
        "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")),
    "bias_inside_sum": (("split_score_sum",), spec(
        "S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] + B[b,h,m,n]", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")),
}

# name -> (rewrite that must not fire, spec, whether the kernel plan accepts it)
LEAVES = {
    "where_nonzero_else": ("pull_value_reads", spec(
        SCORE, "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V2[b,h,n,e] + where(n <= m, V[b,h,n,e], 1.0)"), False),
    "where_row_reduce": ("pull_value_reads", spec(
        SCORE, "L[b,h,m] = where(n <= m, B[b,h,m,n], 0.0)",
        "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e] / L[b,h,m]"), True),
    "where_divided": ("pull_value_reads", spec(
        SCORE, "O[b,h,m,e] = where(n <= m, V[b,h,n,e] / sigmoid(S[b,h,m,n]), 0.0)"), False),
    "value_weights_summed": ("split_value_sum", spec(
        SCORE, "O[b,h,m,e] = (sigmoid(S[b,h,m,n]) + relu(S[b,h,m,n])) * V[b,h,n,e]"), True),
    "scalars_in_order": ("gather_scalars", spec(
        "S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale * c", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e] / c"),
        True),
    "scalars_elementwise": ("gather_scalars", spec(
        SCORE, "T[b,h,m,n] = 2 * S[b,h,m,n] * c", "O[b,h,m,e] = sigmoid(T[b,h,m,n]) * V[b,h,n,e]"), True),
    "score_factor_times_sum": ("split_score_sum", spec(
        "S[b,h,m,n] = (Q[b,h,m,d] + Q2[b,h,m,d]) * K[b,h,n,d]", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]"),
        False),
    "positive_scores": ("fold_identities", spec(
        SCORE, "O[b,h,m,e] = sigmoid(S[b,h,m,n] - 0.5) * V[b,h,n,e]"), True),
}


def _inputs(text: str, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    c = einattn.load_spec(text)
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.randn([SIZES[i] for i in t.indices], generator=g, dtype=dtype) * 0.7 for t in c.inputs}


def _reference_pair(text: str, x: dict) -> tuple[tuple, tuple]:
    plan = make_plan(einattn.load_spec(text))
    outs = plan.original.outputs
    a, b = reference_outputs(plan.original, x), reference_outputs(plan.cascade, x)
    return tuple(a[o] for o in outs), tuple(b[o] for o in outs)


@pytest.mark.parametrize("name", FIRES)
def test_rewrite_fires_and_keeps_the_reference(name):
    rewrites, text = FIRES[name]
    plan = make_plan(einattn.load_spec(text))
    assert plan.rewrites == rewrites
    assert plan.cascade.outputs == plan.original.outputs
    make_kernel_plan(plan)
    for seed in range(3):
        want, got = _reference_pair(text, _inputs(text, seed))
        assert_rel_close(got, want, 1e-12, f"{name} seed {seed}")


POKES = [("Q", float("nan")), ("K", float("inf")), ("K", -float("inf")), ("Q", 1e300)]


@pytest.mark.parametrize("name", FIRES)
@pytest.mark.parametrize("poke", POKES, ids=lambda p: f"{p[0]}={p[1]}")
def test_rewrite_keeps_nonfinite_scores(name, poke):
    """NaN and +-inf reaching the scores give NaN/inf at the reference's places."""
    text = FIRES[name][1]
    x = _inputs(text, 1)
    who, val = poke
    who = who if who in x else who + "2"
    x[who].view(-1)[5] = val
    want, got = _reference_pair(text, x)
    for g, w in zip(got, want):
        assert ieee_mismatch(g, w, 1e-12) is None, ieee_mismatch(g, w, 1e-12)


@pytest.mark.parametrize("name", LEAVES)
def test_rewrite_leaves_other_forms(name):
    rewrite, text, accepted = LEAVES[name]
    plan = make_plan(einattn.load_spec(text))
    assert rewrite not in plan.rewrites, plan.rewrites
    if accepted:
        make_kernel_plan(plan)
    else:
        with pytest.raises(UnsupportedError):
            make_kernel_plan(plan)
    want, got = _reference_pair(text, _inputs(text))
    assert_rel_close(got, want, 1e-12, name)


@pytest.mark.parametrize("a, b", [
    ("(Q[b,h,m,d] * 2) * (K[b,h,n,d] * scale)", "2 * scale * Q[b,h,m,d] * K[b,h,n,d]"),
    ("Q[b,h,m,d] * (K[b,h,n,d] * scale) * 2", "Q[b,h,m,d] * K[b,h,n,d] * 2.0 * scale"),
    ("Q[b,h,m,d] * K[b,h,n,d] / (1 / scale)", "(Q[b,h,m,d] * scale) * K[b,h,n,d]"),
    ("-Q[b,h,m,d] * K[b,h,n,d] * scale", "(0 - Q[b,h,m,d] * scale) * K[b,h,n,d]"),
])
def test_equivalent_scores_plan_alike(a, b):
    plans = [make_plan(einattn.load_spec(spec(f"S[b,h,m,n] = {s}", "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]")))
             for s in (a, b)]
    assert plans[0].cascade == plans[1].cascade


def test_split_names_do_not_clash():
    text = spec(SCORE, "P[b,h,m,n] = sigmoid(S[b,h,m,n])", "O_1[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e]",
                "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] + P[b,h,m,n] * V2[b,h,n,e] + O_1[b,h,m,e] * 0.0",
                outputs="O, O_1")
    c = make_plan(einattn.load_spec(text)).cascade
    names = [s.name for s in c.stmts]
    assert len(names) == len(set(names)) and c.outputs == ("O", "O_1")


def test_pulled_value_read_follows_the_product_rule():
    """The limit of pull_value_reads: NaN in V at a key the where hides gives NaN (0 * NaN, as
    the zoo's P * V form), where the reference of the original gives 0. So every target but
    the reference refuses such a call (einattn/kernel.py) instead of answering NaN."""
    text = FIRES["where_product"][1]
    x = _inputs(text)
    x["V"][0, 0, 12, 0] = float("nan")              # key 12 is hidden from rows m < 12
    want, got = _reference_pair(text, x)
    assert not want[0][0, 0, :12].isnan().any() and got[0][0, 0, :12, 0].isnan().all()
    assert list(finite_only_inputs(make_plan(einattn.load_spec(text)))) == ["V"]
    for target, opts in (("streaming", {}), ("cpu", {}), ("cuda", TRITON)):
        k = einattn.compile(text, target=target, **opts)
        with pytest.raises(einattn.UnsupportedError, match=r"<string>:\d+:\d+: input 'V' holds NaN or inf.*nan_to_num"):
            k(**{n: t.float() for n, t in x.items()})
        x["V"][0, 0, 12, 0] = 0.0
        assert not k(**{n: t.float() for n, t in x.items()})[0, 0, :12].isnan().any()
        x["V"][0, 0, 12, 0] = float("nan")
    torch.testing.assert_close(einattn.compile(text, target="reference")(**x)[0, 0, :12], want[0][0, 0, :12])





@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("name", FIRES)
def test_kernels_match_the_reference(name, target):
    pytest.importorskip("tvm" if target == "cpu" else "triton")
    text = FIRES[name][1]
    x = _inputs(text, 2, torch.float32)
    k = einattn.compile(text, target=target, **(TRITON if target == "cuda" else {}))
    want = reference_outputs(einattn.load_spec(text), x)
    assert_rel_close(k(**x), tuple(want[o] for o in k.plan.original.outputs), 1e-4, f"{name} on {target}")


FLASHBIAS = spec("S1[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale", "S2[b,h,m,n] = Qb[b,h,m,r] * Kb[b,h,n,r]",
                 "S[b,h,m,n] = S1[b,h,m,n] + S2[b,h,m,n]", "M[b,h,m] max= S[b,h,m,n]",
                 "P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])", "L[b,h,m] = P[b,h,m,n]",
                 "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]")


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["reference", "cpu", "cuda"])
def test_flashbias_as_documented(target):
    """docs/spec.md's FlashBias: two score statements and a sum, on every target."""
    pytest.importorskip({"cpu": "tvm", "cuda": "triton"}.get(target, "torch"))
    x = _inputs(FLASHBIAS, 3, torch.float32)
    q, k, v, qb, kb = (x[n].double() for n in ("Q", "K", "V", "Qb", "Kb"))
    want = torch.softmax(q @ k.transpose(-1, -2) / 2 + qb @ kb.transpose(-1, -2), -1) @ v
    got = einattn.compile(FLASHBIAS, target=target, **(TRITON if target == "cuda" else {}))(**x)
    assert_rel_close(got, want, 1e-4 if target != "reference" else 1e-12, target)


def test_a_value_operand_of_inputs_is_computed_before_the_kernel_and_stays_exact():
    """``where(n < Pf, V, 0)`` (a condition on the key alone) is a value operand of inputs:
    named (name_value_operands) and computed before the kernel, so a NaN at a hidden key is
    ignored as in the reference (pull_value_reads would give NaN, hence refuse the call)."""
    text = spec(SCORE, "O[b,h,m,e] = sigmoid(S[b,h,m,n]) * where(n < 5, V[b,h,n,e], 0.0) * c")
    plan = make_plan(einattn.load_spec(text))
    assert plan.rewrites[:1] == ("name_value_operands",) and "pull_value_reads" not in plan.rewrites
    assert [s.name for s in make_kernel_plan(plan).pre] == ["O_v"]
    x = _inputs(text)
    x["V"][0, 0, 7, 0] = float("nan")                   # key 7 is hidden from every row
    want = _reference_pair(text, x)[0][0]
    assert not want.isnan().any()
    for target, opts in (("streaming", {}), ("cpu", {}), ("cuda", TRITON)):
        got = einattn.compile(text, target=target, **opts)(**{n: t.float() for n, t in x.items()})
        assert_rel_close(got, want, 1e-4, target)
