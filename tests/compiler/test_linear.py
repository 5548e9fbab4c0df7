"""Detection of linear cascades on the IR (compiler/linear.py): what reassociates, and why not."""
from __future__ import annotations

import pytest

import einattn
from einattn.compiler.linear import NotLinear, linear_form
from tests.helpers import ZOO_NAMES
from tests.zoo import LINEAR_ZOO

HEAD = """einattn: 1
name: t
inputs: {Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e], G: [b, h, t]}
params: {lam: 0.9}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]
"""


def form(body: str):
    return linear_form(einattn.load_spec(HEAD + body + "outputs: [O]\n"))


EXPECTED = {
    "linear_elu": ("causal", False, (1, -1)),
    "retention": ("causal", True, (1,)),
    "lightning": ("causal", True, (1,)),
    "gla_scalar": ("causal", True, (1,)),
    "efficient": ("none", False, (1,)),
}


@pytest.mark.parametrize("name", list(LINEAR_ZOO))
def test_every_linear_zoo_variant_reassociates(name):
    f = linear_form(einattn.load_spec(name))
    mask, decayed, powers = EXPECTED[name]
    assert (f.mask, f.decay is not None, f.powers) == (mask, decayed, powers)
    assert (f.grid, f.query_index, f.key_index, f.contract, f.value) == (("b", "h"), "m", "n", ("d",), ("e",))
    assert "reassociates into a scan" in f.describe()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_no_quadratic_zoo_variant_reassociates(name):
    with pytest.raises(NotLinear):
        linear_form(einattn.load_spec(name))


@pytest.mark.parametrize("body, reason", [
    # a nonlinearity on S hidden in a where: relu(S) spelled as a select
    ("  - O[b,h,m,e] = where(S[b,h,m,n] > 0, S[b,h,m,n], 0) * V[b,h,n,e]\n", "not a causal mask"),
    ("  - O[b,h,m,e] = sigmoid(S[b,h,m,n]) * V[b,h,n,e]\n", "non-linear function"),
    ("  - O[b,h,m,e] = exp(S[b,h,m,n]) * V[b,h,n,e]\n", "a softmax or another non-linear"),
    ("  - O[b,h,m,e] = where(n <= m, S[b,h,m,n] * exp(2 * m - n), 0) * V[b,h,n,e]\n", "do not cancel"),
    ("  - O[b,h,m,e] = S[b,h,m,n] * lam ** (m - n) * V[b,h,n,e]\n", "without a causal mask"),
    ("  - O[b,h,m,e] = where(n <= m + 3, S[b,h,m,n], 0) * V[b,h,n,e]\n", "not a causal mask"),
    ("  - O[b,h,m,e] = where(n > m - 8, S[b,h,m,n], 0) * V[b,h,n,e]\n", "not a causal mask"),
    ("  - O[b,h,m,e] = S[b,h,m,n] * (m - n) * V[b,h,n,e]\n", "not a decay"),
    ("  - Z[b,h,m] = S[b,h,m,n]\n  - O[b,h,m,e] = S[b,h,m,n] * V[b,h,n,e] * Z[b,h,m]\n", "must divide"),
    ("  - M[b,h,m] max= S[b,h,m,n]\n  - O[b,h,m,e] = S[b,h,m,n] * V[b,h,n,e] / M[b,h,m]\n", "max= over"),
    ("  - O[b,h,m,e] = where(n <= m, S[b,h,m,n] * exp(G[b,h,m] - G[b,h,n] + 1), 0) * V[b,h,n,e]\n", None),
])
def test_what_is_not_a_scan_says_why(body, reason):
    if reason is None:                                   # a constant in the exponent is a scale
        f = form(body)
        assert f.decay is not None and "exp(1.0)" in str(f.features.stmt("__F0").expr)
        return
    with pytest.raises(NotLinear, match=reason):
        form(body)


def test_a_strict_mask_and_a_power_decay():
    f = form("  - O[b,h,m,e] = where(m > n, S[b,h,m,n] * lam ** (m - n), 0) * V[b,h,n,e]\n")
    assert f.mask == "strict" and str(f.decay) == "m * log(lam)"


def test_scale_and_output_gate_stay_outside_the_scan():
    f = form("  - O[b,h,m,e] = where(n <= m, S[b,h,m,n], 0) * V[b,h,n,e] * lam * sigmoid(Q[b,h,m,d])\n"
             if False else
             "  - O[b,h,m,e] = where(n <= m, S[b,h,m,n], 0) * V[b,h,n,e] * lam\n")
    assert str(f.features.stmt("__R").expr) == "lam"


def test_a_normalisers_scale_divides_the_output_and_other_features_are_refused():
    """Found by the random linear cascades: a scale inside a normalised score gave the normaliser
    features of its own (F * scale), which the host refused as an internal error."""
    f = form("  - A[b,h,m,n] = where(n <= m, S[b,h,m,n] * lam, 0)\n  - Z[b,h,m] = A[b,h,m,n]\n"
             "  - O[b,h,m,e] = A[b,h,m,n] * V[b,h,n,e] / Z[b,h,m]\n")
    assert f.powers == (1, -1) and str(f.features.stmt("__R").expr) == "lam / lam"
    with pytest.raises(NotLinear, match="features of its own"):
        form("  - A[b,h,m,n] = where(n <= m, S[b,h,m,n], 0)\n"
             "  - Z[b,h,m] = where(n <= m, exp(Q[b,h,m,d]) * K[b,h,n,d], 0)\n"
             "  - O[b,h,m,e] = A[b,h,m,n] * V[b,h,n,e] / Z[b,h,m]\n")


def test_a_decay_spelled_differently_on_each_side_cancels():
    """Found by a fresh-seed hunt (EINATTN_LINEAR_SEED=4242): G[m] * 0.5 - 0.5 * G[n] was compared as
    two different atoms and refused."""
    f = form("  - O[b,h,m,e] = where(n <= m, S[b,h,m,n] * exp(G[b,h,m] * 0.5 - 0.5 * G[b,h,n]) * lam ** (m - n), 0)"
             " * V[b,h,n,e]\n")
    assert f.decay is not None and "G[b, h, m]" in str(f.decay)
