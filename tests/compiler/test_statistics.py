"""Statistics computed before the kernel (compiler/statistics.py): which statements qualify, and
cosine attention (query and key norms computed in the cascade) on every target."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.compiler.statistics import split_statistics
from tests.helpers import assert_rel_close

COSINE = """
einattn: 1
name: cosine
inputs:
  Q: [b, h, m, d]
  K: [b, h, n, d]
  V: [b, h, n, e]
params:
  tau: 10.0
cascade:
  - Qn[b,h,m] = Q[b,h,m,d] * Q[b,h,m,d]
  - Kn[b,h,n] = K[b,h,n,d] * K[b,h,n,d]
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * rsqrt(Qn[b,h,m]) * rsqrt(Kn[b,h,n]) * tau
  - M[b,h,m] max= S[b,h,m,n]
  - P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])
  - L[b,h,m] = P[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
outputs: [O]
"""


def names(stmts) -> list[str]:
    return [s.name for s in stmts]


def test_query_and_key_norms_are_statistics_and_the_score_is_not():
    pre, kc = split_statistics(einattn.load_spec(COSINE))
    assert names(pre) == ["Qn", "Kn"]
    assert [t.name for t in kc.inputs] == ["Q", "K", "V", "Qn", "Kn"]
    assert "S" in names(kc.stmts) and "Qn" not in names(kc.stmts)


def test_a_per_key_projection_is_a_statistic():
    spec = COSINE.replace("Kn[b,h,n] = K[b,h,n,d] * K[b,h,n,d]", "Kn[b,h,n] = square(K[b,h,n,d] * w[d])")
    spec = spec.replace("V: [b, h, n, e]", "V: [b, h, n, e]\n  w: [d]")
    assert names(split_statistics(einattn.load_spec(spec))[0]) == ["Qn", "Kn"]


def test_not_statistics():
    c = einattn.load_spec(COSINE.replace("outputs: [O]", "outputs: [O, Qn]"))
    assert names(split_statistics(c)[0]) == ["Kn"]             # an output stays in the kernel
    c = einattn.load_spec(COSINE.replace("Kn[b,h,n] = K[b,h,n,d] * K[b,h,n,d]",
                                         "Kn[b,h,n] = K[b,h,n,d] * K[b,h,n,d] * exp(-M0[b,h,m])")
                          .replace("cascade:\n", "cascade:\n  - M0[b,h,m] max= Q[b,h,m,d] * K[b,h,n,d]\n"))
    assert names(split_statistics(c)[0]) == ["Qn"]              # M0 reduces the keys: Kn waits for it
    assert "M" in names(split_statistics(einattn.load_spec(COSINE))[1].stmts)   # streamed


def cosine_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 16, generator=g) for n in (37, 29, 29)]


def torch_cosine(q, k, v):
    q, k, v = (x.double() for x in (q, k, v))
    s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-1, -2)
    return torch.softmax(s * 10, -1) @ v


@pytest.mark.cpu
@pytest.mark.parametrize("target,options", [("reference", {}), ("streaming", {}), ("cpu", {}),
                                            ("cuda", {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}})])
def test_cosine_attention_on_every_target(target, options):
    x = cosine_inputs()
    got = einattn.compile(COSINE, target=target, **options)(*x)
    assert_rel_close(got, torch_cosine(*x), 1e-4 if target != "reference" else 1e-12, target)


def test_per_row_and_per_key_factors_leave_the_score_contraction():
    from einattn.compiler import make_plan
    from tests.helpers import reference_outputs
    c = einattn.load_spec(COSINE)
    plan = make_plan(c)
    assert "hoist_score_factors" in plan.rewrites
    s_dot, s = plan.cascade.stmt("S_dot"), plan.cascade.stmt("S")
    assert s_dot.reduced == ("d",) and not s.reduced and "Qn" not in str(s_dot.expr)
    x = dict(zip("QKV", cosine_inputs(1)))
    x = {k: v.double() for k, v in x.items()}
    x["K"][0, 0, 3] = 0.0                                   # a zero key: rsqrt(0) = inf, 0 * inf = NaN
    want, got = reference_outputs(c, x), reference_outputs(plan.cascade, x)
    torch.testing.assert_close(got["O"], want["O"], rtol=1e-12, atol=1e-12, equal_nan=True)
