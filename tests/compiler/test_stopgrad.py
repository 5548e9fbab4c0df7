"""Stop-gradient inference (compiler/stopgrad.py): which statements are shift-invariant stabilisers."""
from __future__ import annotations

import pytest

import einattn
from einattn.compiler.stopgrad import is_shift_invariant, stabilisers

CUTS = {"softmax": ("M",), "causal": ("M",), "alibi": ("M",), "softcap": ("M",), "gqa": ("M",),
        "sinks": ("M",), "lse": ("M",), "gated": ("M",), "differential": ("M1", "M2"), "signed": ("M",),
        "sigmoid": (), "relu": (), "softplus": (), "centered_relu": ()}


@pytest.mark.parametrize("name", list(CUTS))
def test_zoo_stabilisers(name):
    assert stabilisers(einattn.load_spec(name)) == CUTS[name]


def _spec(*lines, outputs="[O]", params=""):
    body = "\n".join(f"  - {x}" for x in lines)
    return einattn.load_spec(f"einattn: 1\nname: t\ninputs: {{Q: [m, d], K: [n, d], V: [n, e]}}\n{params}"
                             f"cascade:\n  - S[m,n] = Q[m,d] * K[n,d]\n{body}\noutputs: {outputs}\n")


@pytest.mark.parametrize("lines,outputs,invariant", [
    # exp2 with a param in the exponent: the rate is a polynomial in the params and still cancels
    (("M[m] max= S[m,n]", "P[m,n] = exp2((S[m,n] - M[m]) * c)", "L[m] = P[m,n]", "O[m,e] = P[m,n] * V[n,e] / L[m]"),
     "[O]", True),
    # an unnormalised softmax depends on the shift
    (("M[m] max= S[m,n]", "P[m,n] = exp(S[m,n] - M[m])", "O[m,e] = P[m,n] * V[n,e]"), "[O]", False),
    # the max itself is an output
    (("M[m] max= S[m,n]", "P[m,n] = exp(S[m,n] - M[m])", "L[m] = P[m,n]", "O[m,e] = P[m,n] * V[n,e] / L[m]"),
     "[O, M]", False),
    # lse = M + log(L) is invariant
    (("M[m] max= S[m,n]", "P[m,n] = exp(S[m,n] - M[m])", "L[m] = P[m,n]", "O[m] = M[m] + log(L[m])"), "[O]", True),
    # a threshold relative to the max is not a shift
    (("M[m] max= S[m,n]", "P[m,n] = where(S[m,n] > M[m] - 1.0, exp(S[m,n] - M[m]), 0.0)", "L[m] = P[m,n]",
      "O[m,e] = P[m,n] * V[n,e] / L[m]"), "[O]", False),
    # normalised by a sum of squares: exp(2 (S - M)) / sum exp(S - M) is not invariant
    (("M[m] max= S[m,n]", "P[m,n] = exp(S[m,n] - M[m])", "L[m] = P[m,n]",
      "O[m,e] = P[m,n] * P[m,n] * V[n,e] / L[m]"), "[O]", False),
    # ... but over the sum of squares it is
    (("M[m] max= S[m,n]", "P[m,n] = exp(S[m,n] - M[m])", "L[m] = P[m,n] * P[m,n]",
      "O[m,e] = P[m,n] * P[m,n] * V[n,e] / L[m]"), "[O]", True),
    # a max over the queries compared per key varies across the rows of the sum
    (("M[n] max= S[m,n]", "P[m,n] = exp(S[m,n] - M[n])", "L[m] = P[m,n]", "O[m,e] = P[m,n] * V[n,e] / L[m]"),
     "[O]", False),
])
def test_shift_invariance(lines, outputs, invariant):
    c = _spec(*lines, outputs=outputs, params="params: {c: 1.4427}\n")
    assert is_shift_invariant(c, "M") is invariant
