"""IEEE inputs on every target: NaN, +-inf, huge and tiny values give what the float64
reference gives (NaN and inf at the same places, finite values within tolerance).

Regression tests for silent wrong answers found by trying the project as a user
(issue "No silent wrong answers"): each function names the report it guards.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import einattn
from einattn.ir import UnsupportedError
from tests.helpers import ZOO_NAMES, as_tuple, ieee_mismatch, zoo_inputs

pytest.importorskip("tvm")
pytest.importorskip("triton")

VALUES = (math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-40)
TRITON = {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}}


@functools.lru_cache(maxsize=None)
def kernel(name: str, target: str):
    return einattn.compile(name, target=target, **(TRITON if target.startswith("cuda") else {}))


def ieee_close(got, want, rel: float = 1e-3, what: str = "") -> None:
    for g, w in zip(as_tuple(got), as_tuple(want)):
        msg = ieee_mismatch(g, w, rel)
        assert msg is None, f"{what}: {msg}"


def run(name: str, target: str, x: dict, rel: float = 1e-3) -> None:
    want = kernel(name, "reference")(**{k: v.double() for k, v in x.items()})
    ieee_close(kernel(name, target)(**x), want, rel, f"{name} on {target}")


def poke(x: dict, name: str, value: float, at: float = 7 / 11) -> dict:
    y = {k: v.clone() for k, v in x.items()}
    t = y[name].view(-1)
    t[int(at * t.numel())] = value
    return y


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "streaming"])
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_one_extreme_value_in_each_input(name, target):
    x = zoo_inputs(name, dtype=torch.float32, b=1, h=2, m=37, n=53)
    for inp in x:
        for v in VALUES:
            run(name, target, poke(x, inp, v))


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["softmax", "causal", "sliding_window", "bias", "sinks", "lse", "relu",
                                  "centered_relu", "softcap", "differential"])
def test_triton_interpreter_extreme_values(name):
    x = zoo_inputs(name, dtype=torch.float32, b=1, h=2, m=37, n=53)
    for inp in x:
        for v in (math.nan, math.inf, -math.inf, 1e30):
            run(name, "cuda", poke(x, inp, v))


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("big", [1e8, 1e9, 1e10, 1e20, 1e30, 3e38])
def test_one_huge_score(target, big):
    """Every target returns v[0] when one score is far above the rest (cpu gave 0/inf/NaN at 1e10:
    exp(a - b) was printed as an FMA a*log2e - b*log2e whose rounding errors did not cancel)."""
    q = torch.ones(1, 1, 1, 1)
    k = torch.zeros(1, 1, 64, 1)
    k[0, 0, 0, 0] = big
    v = torch.randn(1, 1, 64, 1)
    out = kernel("softmax", target)(q, k, v)
    if target == "cuda" and big * math.log2(math.e) > 3.4e38:
        # the documented limit of the Triton kernels' one-FMA exp (docs/dtypes.md): a score past
        # FLT_MAX / log2(e) overflows in log2 units, loudly
        assert torch.isnan(out).all()
        return
    torch.testing.assert_close(out, v[:, :, :1], rtol=1e-6, atol=0)


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_nan_and_inf_in_k(target):
    """A NaN in K reached no output on cpu; a single +inf score gave 0.0 (reference: NaN)."""
    x = zoo_inputs("softmax", dtype=torch.float32, b=1, h=2, m=64, n=64)
    run("softmax", target, poke(x, "K", math.nan))
    k = x["K"].clone()
    k[0, 0, 3] = 0.0
    k[0, 0, 3, 0] = math.inf
    run("softmax", target, {**x, "K": k})


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_causal_nan_in_q_reaches_the_whole_row(target):
    x = zoo_inputs("causal", dtype=torch.float32, b=1, h=1, m=48, n=48, d=48, e=48)
    x["Q"][0, 0, 5, 0] = math.nan
    run("causal", target, x)


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_nan_in_v_at_a_hidden_key_is_not_skipped(target):
    """The reference computes 0 * NaN = NaN for keys a causal mask hides; a kernel that skips
    hidden key tiles must visit them when such an input is not finite (every row becomes NaN)."""
    x = zoo_inputs("causal", dtype=torch.float32, b=1, h=2, m=100, n=100)
    x["V"][0, 0, 99, 0] = math.nan
    want = kernel("causal", "reference")(**{k: v.double() for k, v in x.items()})
    assert want[0, 0, :, 0].isnan().all()
    run("causal", target, x)
    run("causal", target, zoo_inputs("causal", dtype=torch.float32, b=1, h=2, m=100, n=100))   # skips again


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda", "streaming"])
def test_bias_row_of_minus_inf_is_a_masked_row(target):
    """An additive -inf mask given as an input: a fully masked row outputs 0, as in the reference
    ((-inf) - (-inf) = -inf, 0 / 0 = 0), also in tiles with no mask predicate."""
    x = zoo_inputs("bias", dtype=torch.float32, b=1, h=2, m=70, n=70)
    x["B"][..., 3, :] = -math.inf
    x["B"][..., 10, 5:] = -math.inf
    run("bias", target, x)


MAXSPEC = """
einattn: 1
name: maxnan
inputs: {Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e]}
params: {eps: 0.5}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]
  - P[b,h,m,n] = max(relu(S[b,h,m,n]), eps) + min(S[b,h,m,n], eps)
  - M[b,h,m] max= S[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e]
  - R[b,h,m] = M[b,h,m] * 1.0
outputs: [O, R]
"""


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda", "streaming"])
def test_min_max_propagate_nan(target):
    """max(NaN, eps) dropped the NaN on cpu and cuda; the rule is torch.maximum's: NaN wins."""
    k = einattn.compile(MAXSPEC, target=target, **(TRITON if target == "cuda" else {}))
    ref = einattn.compile(MAXSPEC, target="reference")
    x = {n: torch.randn(1, 2, 20, 16) for n in "QKV"}
    x["K"][0, 1, 4, 2] = math.nan
    ieee_close(k(**x), ref(**{n: t.double() for n, t in x.items()}), 1e-4, target)


TEMP = """
einattn: 1
name: temp
inputs: {Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e], temp: [h]}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]
  - M[b,h,m] max= S[b,h,m,n]
  - P[b,h,m,n] = exp((S[b,h,m,n] - M[b,h,m]) / temp[h])
  - L[b,h,m] = P[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
outputs: [O]
"""


@pytest.mark.cpu
def test_triton_divides_a_tile_by_a_per_head_tensor():
    """``S / temp[h]`` crashed in the interpreter (``bitwise_and`` in the 0/0 rule)."""
    x = {n: torch.randn(1, 2, 20, 16) for n in "QKV"} | {"temp": torch.rand(2) + 0.5}
    k = einattn.compile(TEMP, target="cuda", **TRITON)
    want = einattn.compile(TEMP, target="reference")(**{n: t.double() for n, t in x.items()})
    ieee_close(k(**x), want, 1e-4)


@pytest.mark.cpu
def test_triton_interpreter_bf16_is_right():
    """Triton's interpreter computes tl.dot on bf16 wrongly (outputs ~3e8): einattn interprets on
    fp32 copies and returns bf16."""
    x = {n: torch.randn(1, 2, 40, 32).bfloat16() for n in "QKV"}
    got = kernel("causal", "cuda")(**x)
    assert got.dtype == torch.bfloat16
    want = kernel("causal", "reference")(**{n: t.double() for n, t in x.items()})
    ieee_close(got, want, 2e-2)


@pytest.mark.cpu
def test_triton_refuses_float64_and_mixed_dtypes():
    k = kernel("softmax", "cuda")
    x = {n: torch.randn(1, 2, 20, 16) for n in "QKV"}
    with pytest.raises(UnsupportedError, match="float64.*reference"):
        k(**{n: t.double() for n, t in x.items()})
    with pytest.raises(UnsupportedError, match=r"K: float16.*V: float32|Q: float32, K: float16"):
        k(Q=x["Q"], K=x["K"].half(), V=x["V"])


@pytest.mark.cpu
def test_triton_offsets_past_32_bits_are_refused():
    from einattn.backends.triton.backend import check_offsets

    class Big:                      # shape and strides of a 2**31-element slice, no storage
        shape, dtype = (1, 1, 2 ** 17, 2 ** 15), torch.float16

        def stride(self):
            return (2 ** 32, 2 ** 32, 2 ** 15, 1)

    art = kernel("softmax", "cuda")._artifact
    small = torch.empty(1, 1, 4, 4)
    check_offsets(art, {"Q": small, "K": small, "V": small}, {"O": small}, 1)
    with pytest.raises(UnsupportedError, match=r"2\*\*31.*chunks of the query rows"):
        check_offsets(art, {"Q": Big(), "K": small, "V": small}, {"O": small}, 1)


def test_triton_aot_refuses_slices_past_32_bits_and_takes_64_bit_strides():
    from einattn.backends.triton.aot import check_slice_offsets, signature
    art = einattn.compile("softmax", target="cuda:sm_90")._artifact
    with pytest.raises(UnsupportedError, match=r"2\*\*31"):
        check_slice_offsets(art, {"b": 1, "h": 1, "m": 40_000_000, "n": 128, "d": 64, "e": 64})
    big = {"b": 2, "h": 4096, "m": 8192, "n": 128, "d": 64, "e": 64}     # Q's batch stride is 2**31
    check_slice_offsets(art, big)
    sig, _, _ = signature(art, big, torch.float16)
    assert sig["stride_Q_0"] == "i64" and sig["stride_Q_1"] == "i32"


@pytest.mark.cpu
def test_nonfinite_inputs_raise_no_numpy_warning():
    """The finiteness check sums the inputs: inf - inf there must not reach the user as a warning."""
    import warnings
    x = zoo_inputs("causal", dtype=torch.float32, b=1, h=2, m=40, n=40)
    x["K"][0, 0, 3, 0], x["K"][0, 0, 4, 0] = math.inf, -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel("causal", "cpu")(**x)
