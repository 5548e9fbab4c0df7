"""What ``Kernel.__call__`` refuses, on every target, instead of a wrong or detached result."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.ir import SpecError, UnsupportedError
from tests.helpers import SOFTMAX, zoo_inputs

TARGETS = ["reference", "streaming", "cpu", "cuda"]


def _kernel(name: str, target: str):
    kw = {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}} if target == "cuda" else {}
    return einattn.compile(name, target=target, **kw)


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_requires_grad_trains_and_no_grad_does_not(target):
    k = _kernel("softmax", target)
    x = zoo_inputs("softmax", dtype=torch.float32, b=1, h=2, m=8, n=8)
    x["Q"].requires_grad_(True)
    assert k(**x).grad_fn is not None     # the derived backward (docs/backward.md)
    with torch.no_grad():                 # inference: no graph
        assert not k(**x).requires_grad


@pytest.mark.parametrize("target", ["reference", "streaming"])
def test_requires_grad_works_on_torch_targets(target):
    x = zoo_inputs("softmax", dtype=torch.float64, b=1, h=2, m=5, n=7)
    x["Q"].requires_grad_(True)
    _kernel("softmax", target)(**x).sum().backward()
    assert x["Q"].grad is not None and torch.isfinite(x["Q"].grad).all()


@pytest.mark.cpu
@pytest.mark.parametrize("target", TARGETS)
def test_meta_tensors_are_refused_clearly(target):
    k = _kernel("softmax", target)
    q = torch.empty(1, 2, 5, 4, device="meta")
    with pytest.raises(UnsupportedError, match="meta device"):
        k(q, q, q)


@pytest.mark.cpu
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sizes", [dict(b=0), dict(h=0), dict(m=0), dict(e=0)])
def test_empty_outputs_are_empty(target, sizes):
    x = zoo_inputs("softmax", dtype=torch.float32, **{"b": 1, "h": 2, "m": 5, "n": 7, "d": 4, "e": 4, **sizes})
    out = _kernel("softmax", target)(**x)
    assert out.numel() == 0 and tuple(out.shape) == (x["Q"].shape[0], x["Q"].shape[1], x["Q"].shape[2],
                                                        x["V"].shape[3])


@pytest.mark.cpu
def test_cpu_zero_value_size_with_a_non_empty_output_is_refused():
    """lse with e=0: O is empty but LSE is not; the kernel used to return LSE uninitialised."""
    x = zoo_inputs("lse", dtype=torch.float32, b=1, h=2, m=5, n=7, e=0)
    with pytest.raises(UnsupportedError, match="e=0.*reference"):
        _kernel("lse", "cpu")(**x)
    o, lse = _kernel("lse", "reference")(**{k: v.double() for k, v in x.items()})
    assert o.numel() == 0 and lse.shape == (1, 2, 5)


def test_a_zero_head_dim_names_the_param_it_breaks():
    x = zoo_inputs("softmax", dtype=torch.float32, b=1, h=2, m=5, n=7, d=0)
    with pytest.raises(SpecError, match="scale"):
        _kernel("softmax", "reference")(**x)


@pytest.mark.cpu
@pytest.mark.parametrize("form", ["-Q[b,h,m,d] * K[b,h,n,d] * scale", "Q[b,h,m,d] * K[b,h,n,d] * scale - 0",
                                  "-(Q[b,h,m,d] * K[b,h,n,d] * scale)", "Q[b,h,m,d] * K[b,h,n,d] * scale + 0",
                                  "1 * Q[b,h,m,d] * K[b,h,n,d] * scale / 1"])
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_negated_and_offset_scores_compile(form, target):
    """``-Q*K*scale`` and ``Q*K*scale - 0`` were refused as "cannot be tiled"."""
    spec = SOFTMAX.replace("Q[b,h,m,d] * K[b,h,n,d] * scale", form)
    assert "fold_identities" in einattn.explain(spec).rewrites
    x = zoo_inputs("softmax", dtype=torch.float32, b=1, h=2, m=20, n=30, d=16, e=16)
    want = einattn.compile(spec, target="reference")(**{k: v.double() for k, v in x.items()})
    got = _kernel(spec, target)(**x)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


COSINE = SOFTMAX.replace("  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale\n",
                         "  - Qn[b,h,m] = Q[b,h,m,d] * Q[b,h,m,d]\n"
                         "  - S0[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]\n"
                         "  - S[b,h,m,n] = S0[b,h,m,n] * rsqrt(Qn[b,h,m]) * scale\n")
# an output normalised by its own norm: a statistic of a value the kernel computes
OUT_NORM = SOFTMAX.replace("outputs: [O]", "  - Z[b,h,m] = O[b,h,m,e] * O[b,h,m,e]\n"
                                            "  - Out[b,h,m,e] = O[b,h,m,e] * rsqrt(Z[b,h,m] + 1e-6)\n"
                                            "outputs: [Out]")
# ... and one over two indices after the key loop (the output against the queries)
OUT_DOT_Q = OUT_NORM.replace("Z[b,h,m] = O[b,h,m,e] * O[b,h,m,e]", "Z[b,h,m] = O[b,h,m,e] * Q[b,h,m,d]")


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_row_statistic_over_the_head_dim_runs_before_the_kernel(target):
    """Cosine attention with the query norm computed in the cascade reached "internal error:
    Undefined variable: l_d" on cpu, then was refused; now the norm is computed before the
    kernel (compiler/statistics.py) and read by it as an input."""
    x = zoo_inputs("softmax", dtype=torch.float64, b=1, h=2, m=6, n=9, d=4, e=4)
    want = _kernel(COSINE, "reference")(**x)
    torch.testing.assert_close(_kernel(COSINE, "streaming")(**x), want)
    got = _kernel(COSINE, target)(**{k: v.float() for k, v in x.items()})
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_statistic_after_the_key_loop_runs_in_the_epilogue(target):
    """An output normalised by its own norm (a sum over e after the key loop) was refused."""
    x = zoo_inputs("softmax", dtype=torch.float64, b=1, h=2, m=21, n=9, d=4, e=8)
    want = _kernel(OUT_NORM, "reference")(**x)
    got = _kernel(OUT_NORM, target)(**{k: v.float() for k, v in x.items()})
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_reduction_over_two_indices_after_the_key_loop_is_refused_with_its_place(target):
    with pytest.raises(UnsupportedError, match=r"<string>:\d+:\d+: per-row statement 'Z.*reduces over e, d into "
                                               r"\[b, h, m\].*reduce it in PyTorch"):
        _kernel(OUT_DOT_Q, target)
