"""The backward schedule (compiler/backward_plan.py): which stage computes what."""
from __future__ import annotations

import pytest

import einattn
from einattn.compiler import make_kernel_plan, make_plan
from einattn.compiler.autodiff import derive
from einattn.compiler.backward_plan import plan_backward, query_index
from tests.helpers import ZOO_NAMES


def _stages(name, wrt=None):
    p = plan_backward(derive(einattn.load_spec(name), wrt))
    return p, {st.name: st for st in p.stages}


def test_softmax_is_dq_then_dkv_with_a_preprocess():
    p, st = _stages("softmax")
    assert [s.name for s in p.stages] == ["pre", "dq", "dkv"]
    assert st["pre"].cascade.stmts[0].reduced == ("e",)              # D = sum_e dO * O / L
    assert st["dq"].cascade.key == "n" and st["dq"].cascade.outputs == ("dQ_S",)
    assert st["dkv"].cascade.key == "m" and set(st["dkv"].cascade.outputs) == {"dK_S", "dV_O"}
    for k in ("dq", "dkv"):                                        # one pass each, no max over keys
        assert make_plan(st[k].cascade).passes == 1


def test_dkv_kernel_streams_the_queries():
    _, st = _stages("causal")
    kp = make_kernel_plan(make_plan(st["dkv"].cascade))
    assert (kp.query, kp.key) == ("n", "m")
    assert kp.passes[0].skip_empty                                  # causal: hidden query tiles skipped
    assert {op.value_index for op in kp.passes[0].loop if op.kind.value == "value"} == {"d", "e"}


def test_centered_relu_dkv_reads_the_dq_kernels_row_sum():
    p, st = _stages("centered_relu")
    assert [s.name for s in p.stages] == ["pre", "dq", "dkv"]
    assert "dMu_P" in st["dq"].cascade.outputs
    assert "dMu_P" in {t.name for t in st["dkv"].cascade.inputs}
    assert make_plan(st["dq"].cascade).passes == 2                   # the mean's gradient, then dQ


def test_slope_gradient_is_a_key_sum_then_rows():
    p, st = _stages("alibi")
    rows = st["rows"].cascade
    assert rows.outputs == ("dslope_Sm",)
    assert "dslope_Sm_rows" in st["dq"].cascade.outputs
    assert st["dq"].cascade.stmt("dslope_Sm_rows").reduced == ("n",)


def test_gqa_group_sums_run_after_the_kernels():
    _, st = _stages("gqa")
    assert {s.name for s in st["rows"].cascade.stmts} == {"dK_S_group", "dV_O_group"}


def test_dense_bias_gradient_runs_over_query_blocks():
    p, st = _stages("bias")
    assert st["tiles"].kind == "tiles" and st["tiles"].cascade.outputs == ("dB_T",)
    _, st = _stages("bias", ("Q", "K", "V"))
    assert "tiles" not in st


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_backward_plans_kernels(name):
    p = plan_backward(derive(einattn.load_spec(name)))
    assert p.query == "m" == query_index(einattn.load_spec(name))
    for st in p.stages:
        if st.kind == "kernel":
            make_kernel_plan(make_plan(st.cascade))                    # every kernel stage tiles
    saved = derive(einattn.load_spec(name)).saved
    assert all("n" not in einattn.load_spec(name).stmt(s).indices for s in saved)


def test_cascade_without_a_score_has_no_query_index():
    c = einattn.load_spec("einattn: 1\nname: t\ninputs: {V: [m, n]}\ncascade:\n  - O[m] = V[m,n]\noutputs: [O]\n")
    with pytest.raises(einattn.UnsupportedError, match="no score contraction"):
        query_index(c)


def test_gradient_through_a_max_over_the_keys_is_refused_on_kernels():
    # an unnormalised output depends on the shift M, so M is no stabiliser and its gradient goes
    # to the argmax key: found by comparing recomputed scores with the saved max, which a dkv
    # kernel does not reproduce bit for bit (a random cascade got dK wrong on the CPU that way)
    c = einattn.load_spec("""
einattn: 1
name: unnormalised_max
inputs: {Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e]}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]
  - M[b,h,m] max= S[b,h,m,n]
  - P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e]
outputs: [O]
""")
    bw = derive(c)
    assert bw.cut == () and bw.routed == ("M",)
    with pytest.raises(einattn.UnsupportedError, match=r"<string>:\d+:\d+: 'M' is a max over the keys"):
        plan_backward(bw)
    assert plan_backward(derive(c, ("V",))).stages              # V's gradient does not go through M
