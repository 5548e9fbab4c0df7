"""Pass analysis and the rewrites that reduce passes (FuseMax), table-driven over the zoo."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.compiler import PIPELINE, Role, defer_normalization, online_rescaling, place, prune_unused
from einattn.ir import parse_spec, verify
from tests.helpers import SOFTMAX, ZOO_NAMES, assert_rel_close, reference_outputs, zoo_inputs

SOFTMAX_LIKE = ("defer_normalization", "online_rescaling")
# name -> (passes as written, passes planned, rewrites that fire, in order)
PASSES = {
    "softmax": (3, 1, SOFTMAX_LIKE),
    "causal": (3, 1, SOFTMAX_LIKE),
    "causal_bottom_right": (3, 1, SOFTMAX_LIKE),
    "sliding_window": (3, 1, SOFTMAX_LIKE),
    "prefix_lm": (3, 1, SOFTMAX_LIKE),
    "alibi": (3, 1, SOFTMAX_LIKE),
    "softcap": (3, 1, SOFTMAX_LIKE),
    "bias": (3, 1, SOFTMAX_LIKE),
    "gqa": (3, 1, SOFTMAX_LIKE),
    "sinks": (3, 1, SOFTMAX_LIKE),
    "lse": (3, 1, SOFTMAX_LIKE),
    "gated": (3, 1, SOFTMAX_LIKE),
    "differential": (3, 1, SOFTMAX_LIKE),
    "signed": (3, 1, SOFTMAX_LIKE),
    "sigmoid": (1, 1, ()),
    "relu": (2, 1, ("defer_normalization",)),
    "softplus": (2, 1, ("defer_normalization",)),
    "centered_relu": (3, 2, ("defer_normalization",)),
}
SMALL = dict(b=1, h=2, g=1, m=9, n=13, d=4, e=3)


def test_table_covers_the_zoo():
    assert sorted(PASSES) == sorted(ZOO_NAMES)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_pass_counts(name):
    naive, planned, rewrites = PASSES[name]
    plan = einattn.explain(name)
    assert (plan.naive_passes, plan.passes, plan.rewrites) == (naive, planned, rewrites)
    assert len(plan.schedule) == planned == max(p.index for p in plan.schedule)
    assert len(plan.naive_chain) == naive - 1
    order = [n for n, _ in PIPELINE]
    assert [order.index(r) for r in plan.rewrites] == sorted(order.index(r) for r in plan.rewrites)
    assert [n for n, _ in plan.stages] == list(plan.rewrites)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_stage_verifies(name):
    plan = einattn.explain(name)
    verify(plan.original)
    for _, stage in plan.stages:
        verify(stage)
    assert plan.cascade is (plan.stages[-1][1] if plan.stages else plan.original)
    assert plan.original == einattn.load_spec(name)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_state_is_per_row(name):
    """Nothing carried across key tiles keeps the key index: never an [M, N] tensor."""
    plan = einattn.explain(name)
    c = plan.cascade
    for p in plan.schedule:
        for s in plan.state[p.index]:
            assert c.key not in c.stmt(s).indices, (p.index, s)
    for o in c.outputs:
        assert c.key not in c.stmt(o).indices


def test_softmax_report():
    text = str(einattn.explain("softmax"))
    for part in ("passes over 'n' as written: 3",
                 "pass 2 starts at P: it iterates 'n' and reads M",
                 "pass 3 starts at O: it iterates 'n' and reads L",
                 "rewrite defer_normalization", "-> 2 pass(es)",
                 "rewrite online_rescaling", "-> 1 pass(es)",
                 "O_u[b,h,m,e] = P[b, h, m, n] * V[b, h, n, e]",
                 "running(M[b, h, m])", "rescaled by exp(old M - new M)",
                 "plan: 1 pass(es) over 'n'  (3 -> 1: defer_normalization -> online_rescaling)",
                 "state carried across key tiles: M, L, O_u"):
        assert part in text, part
    assert text.index("defer_normalization") < text.index("online_rescaling")


def test_report_without_rewrites():
    text = str(einattn.explain("sigmoid"))
    assert "rewrites: none applied" in text and "(1 -> 1: no rewrite)" in text


def test_softmax_schedule():
    plan = einattn.explain("softmax")
    (p,) = plan.schedule
    assert [(s.name, s.role) for s in p.loop] == [("S", Role.TILE), ("M", Role.REDUCE), ("P", Role.TILE),
                                                  ("L", Role.REDUCE), ("O_u", Role.REDUCE)]
    assert [s.name for s in p.epilogue] == ["O"] and not plan.prologue
    assert plan.state == {1: ["M", "L", "O_u"]}
    assert plan.cascade.stmt("L").rescale == (("M", "exp"),)
    assert plan.cascade.stmt("O_u").rescale == (("M", "exp"),)


def test_centered_relu_recomputes_scores_in_pass_2():
    plan = einattn.explain("centered_relu")
    p1, p2 = plan.schedule
    assert [s.name for s in p1.loop] == ["S", "Mu"]
    assert [(s.name, s.recomputed) for s in p2.loop] == [("S", True), ("P", False), ("L", False), ("O_u", False)]
    assert plan.state == {1: ["Mu"], 2: ["L", "O_u"]}
    assert plan.placements["P"].reason == "Mu"


def test_naive_placements_of_softmax():
    pl = place(parse_spec(SOFTMAX))
    assert {k: (v.pass_no, v.role) for k, v in pl.items()} == {
        "S": (1, Role.TILE), "M": (1, Role.REDUCE), "P": (2, Role.TILE), "L": (2, Role.REDUCE),
        "O": (3, Role.REDUCE)}


# -- rewrites as pure functions: same object back when the precondition fails --------

def test_rewrites_return_their_input_when_they_do_not_apply():
    c = parse_spec(SOFTMAX)
    assert prune_unused(c) is c
    sig = einattn.load_spec("sigmoid")
    assert defer_normalization(sig) is sig and online_rescaling(sig) is sig
    # online rescaling needs the deferred form first: O still reads the complete L
    deferred = defer_normalization(c)
    assert deferred is not c and online_rescaling(deferred) is not deferred
    cr = defer_normalization(einattn.load_spec("centered_relu"))
    assert online_rescaling(cr) is cr


def test_prune_unused_drops_dead_statements():
    text = SOFTMAX.replace("  - L[b,h,m] = P[b,h,m,n]\n",
                           "  - L[b,h,m] = P[b,h,m,n]\n  - Z[b,h,m] = exp(L[b,h,m])\n")
    plan = einattn.explain(text)
    assert plan.rewrites[0] == "prune_unused" and plan.cascade.stmt("Z") is None
    assert plan.stages[0][1].stmts == parse_spec(SOFTMAX).stmts


# -- cascades no rewrite reduces (fully): still a correct multi-pass plan ------------

def _cascade(*stmts: str, outputs: str = "[O]") -> str:
    head = SOFTMAX[:SOFTMAX.index("cascade:")] + "  inv_n: 1 / n\n"
    return head + "cascade:\n  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale\n" + \
        "".join(f"  - {s}\n" for s in stmts) + f"outputs: {outputs}\n"


# id -> (spec text, passes as written, passes planned, rewrites)
IRREDUCIBLE = {
    "square_of_exp": (_cascade("M[b,h,m] max= S[b,h,m,n]", "Y[b,h,m,n] = square(exp(S[b,h,m,n] - M[b,h,m]))",
                               "L[b,h,m] = Y[b,h,m,n]", "O[b,h,m,e] = Y[b,h,m,n] * V[b,h,n,e] / L[b,h,m]"),
                      3, 2, ("defer_normalization",)),
    "relu_of_max": (_cascade("M[b,h,m] max= S[b,h,m,n]", "P[b,h,m,n] = relu(S[b,h,m,n] - M[b,h,m] + 1)",
                             "L[b,h,m] = P[b,h,m,n]", "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / (L[b,h,m] + 1)"),
                    3, 2, ("defer_normalization",)),
    "exp_plus_one": (_cascade("M[b,h,m] max= S[b,h,m,n]", "P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m]) + 1",
                              "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e]"),
                     2, 2, ()),
    "max_read_outside_exp": (_cascade("M[b,h,m] max= S[b,h,m,n]",
                                      "O[b,h,m,e] = exp(S[b,h,m,n] - M[b,h,m]) * (S[b,h,m,n] - M[b,h,m]) * V[b,h,n,e]"),
                             2, 2, ()),
    # not irreducible: deferral moves the key-free factor M out, then the max streams
    "max_factor_deferred_first": (_cascade("M[b,h,m] max= S[b,h,m,n]",
                                           "O[b,h,m,e] = exp(S[b,h,m,n] - M[b,h,m]) * M[b,h,m] * V[b,h,n,e]"),
                                  2, 1, SOFTMAX_LIKE),
    "min_reduction": (_cascade("M[b,h,m] min= S[b,h,m,n]", "O[b,h,m,e] = exp(M[b,h,m] - S[b,h,m,n]) * V[b,h,n,e]"),
                      2, 2, ()),
    "variance": (_cascade("Mu[b,h,m] = S[b,h,m,n] * inv_n", "Var[b,h,m] = square(S[b,h,m,n] - Mu[b,h,m]) * inv_n",
                          "O[b,h,m,e] = (S[b,h,m,n] - Mu[b,h,m]) * V[b,h,n,e] / (Var[b,h,m] + 1)"),
                 3, 2, ("defer_normalization",)),
    "max_of_normalised": (_cascade("M[b,h,m] max= S[b,h,m,n]", "P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])",
                                   "L[b,h,m] = P[b,h,m,n]", "A[b,h,m] max= P[b,h,m,n] / L[b,h,m]",
                                   "O[b,h,m,e] = where(P[b,h,m,n] / L[b,h,m] >= A[b,h,m], V[b,h,n,e], 0.0)"),
                          4, 4, ("pull_value_reads",)),
}


@pytest.mark.parametrize("case", list(IRREDUCIBLE))
def test_irreducible_cascade_keeps_passes(case):
    text, naive, planned, rewrites = IRREDUCIBLE[case]
    plan = einattn.explain(text)
    assert (plan.naive_passes, plan.passes, plan.rewrites) == (naive, planned, rewrites)


@pytest.mark.parametrize("block_n", [1, 5, 64])
@pytest.mark.parametrize("case", list(IRREDUCIBLE))
def test_irreducible_cascade_streams_correctly(case, block_n):
    c = einattn.load_spec(IRREDUCIBLE[case][0])
    x = zoo_inputs("softmax", **{**SMALL, "n": 23})
    want = einattn.compile(c, target="reference")(**x)
    got = einattn.compile(c, target="streaming", config={"BLOCK_N": block_n})(**x)
    assert_rel_close(got, want, 1e-10, case)


# -- semantic preservation: the rewritten cascade computes the same thing ------------

@pytest.mark.parametrize("name", ZOO_NAMES)
def test_rewrites_preserve_semantics(name):
    plan = einattn.explain(name)
    x = zoo_inputs(name, **SMALL, dtype=torch.float64)
    want = reference_outputs(plan.original, x)
    for stage_name, stage in plan.stages:
        got = reference_outputs(stage, x)
        for o in plan.original.outputs:
            assert_rel_close(got[o], want[o], 1e-12, f"{name} after {stage_name}")
