"""Sanity checks of the zoo oracles (tests/zoo.py) against PyTorch and each other.

Nothing here imports einattn: these tests make sure the oracle is right before it
is used to judge einattn's reference executor.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.zoo import LINEAR_ZOO, SPARSE_ZOO, ZOO, Variant, sizes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEC_FIELDS = {"einattn", "name", "doc", "inputs", "params", "cascade", "outputs"}
NAMES = [
    "softmax", "causal", "causal_bottom_right", "sliding_window", "prefix_lm", "alibi",
    "softcap", "bias", "gqa", "sinks", "lse", "sigmoid", "relu", "softplus", "gated",
    "differential", "signed", "centered_relu",
]
# A value for every spec param that differs from its default at sizes().
OVERRIDES = {
    "scale": 0.3, "off": 0, "W": 5, "P": 3, "c": 1.0, "r": 4, "beta": 0.0,
    "ln_n": 1.0, "inv_n": 0.5, "eps": 1.0,
}
TIGHT = {"rtol": 0.0, "atol": 1e-12}


def _inputs(v: Variant, seed: int = 0, **size_overrides) -> dict[str, torch.Tensor]:
    return v.make_inputs(sizes(**size_overrides), torch.Generator().manual_seed(seed))


def _spec(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _scores(q, k, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return scale * q.double() @ k.double().transpose(-1, -2)


def _sdpa(x, **kw):
    return F.scaled_dot_product_attention(x["Q"].double(), x["K"].double(), x["V"].double(), **kw)


# ---------------------------------------------------------------------------
# The table and the example specs agree


def test_zoo_covers_every_example():
    assert list(ZOO) == NAMES
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(NAMES + list(LINEAR_ZOO) + list(SPARSE_ZOO))


@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_variant(name):
    spec, v = _spec(name), ZOO[name]
    assert set(spec) <= SPEC_FIELDS and spec["einattn"] == 1 and spec["name"] == name
    assert isinstance(spec["doc"], str) and "\n" not in spec["doc"].strip()
    sz = sizes()
    x = _inputs(v)
    assert list(x) == list(spec["inputs"])
    for tensor_name, dims in spec["inputs"].items():
        assert all(isinstance(i, str) for i in dims)
        assert tuple(x[tensor_name].shape) == tuple(sz[i] for i in dims), tensor_name
        assert x[tensor_name].dtype == torch.float32
    params = spec.get("params") or {}
    assert all(isinstance(k, str) for k in params)  # e.g. an unquoted `off:` loads as False
    numeric = {k: p for k, p in params.items() if isinstance(p, (int, float))}
    assert numeric == v.params
    outs = _as_tuple(v.torch_ref(x, v.params))
    assert len(outs) == len(spec["outputs"])
    for o in outs:
        assert o.dtype == torch.float64 and torch.isfinite(o).all()
        assert o.shape[:3] == (sz["b"], sz["h"], sz["m"])


@pytest.mark.parametrize("name", NAMES)
def test_every_param_is_read(name):
    v = ZOO[name]
    x = _inputs(v)
    base = _as_tuple(v.torch_ref(x, {}))
    for p in _spec(name).get("params") or {}:
        changed = _as_tuple(v.torch_ref(x, {p: OVERRIDES[p]}))
        # Bitwise: centered_relu is scale-invariant up to eps, so `scale` moves it only ~1e-7.
        assert not torch.equal(base[0], changed[0]), f"{name} ignores param {p}"


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_deterministic(name):
    v = ZOO[name]
    a, b, c = _inputs(v, 1), _inputs(v, 1), _inputs(v, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if k != "slope")


# ---------------------------------------------------------------------------
# Against PyTorch's own attention


def test_softmax_matches_sdpa():
    x = _inputs(ZOO["softmax"])
    torch.testing.assert_close(ZOO["softmax"].torch_ref(x, {}), _sdpa(x), **TIGHT)
    torch.testing.assert_close(ZOO["softmax"].torch_ref(x, {"scale": 0.3}), _sdpa(x, scale=0.3), **TIGHT)


def test_causal_matches_sdpa_when_square():
    x = _inputs(ZOO["causal"], n=77)
    torch.testing.assert_close(ZOO["causal"].torch_ref(x, {}), _sdpa(x, is_causal=True), **TIGHT)


def test_causal_is_top_left_when_not_square():
    x = _inputs(ZOO["causal"])
    m, n = torch.arange(77)[:, None], torch.arange(131)[None, :]
    torch.testing.assert_close(ZOO["causal"].torch_ref(x, {}), _sdpa(x, attn_mask=n <= m), **TIGHT)


def test_causal_bottom_right_equals_causal_when_square():
    x = _inputs(ZOO["causal"], n=77)
    torch.testing.assert_close(ZOO["causal_bottom_right"].torch_ref(x, {}), ZOO["causal"].torch_ref(x, {}), **TIGHT)


def test_causal_bottom_right_matches_sdpa_mask():
    x = _inputs(ZOO["causal"])  # m = 77 < n = 131: query m sees keys n <= m + 54
    m, n = torch.arange(77)[:, None], torch.arange(131)[None, :]
    want = _sdpa(x, attn_mask=n <= m + 54)
    torch.testing.assert_close(ZOO["causal_bottom_right"].torch_ref(x, {}), want, **TIGHT)


def test_fully_masked_rows_are_zero_not_nan():
    x = _inputs(ZOO["causal_bottom_right"], m=131, n=77)  # rows m < 54 see no key
    out = ZOO["causal_bottom_right"].torch_ref(x, {})
    assert not out.isnan().any()
    assert (out[:, :, :54] == 0).all()
    assert (out[:, :, 54:].abs().amax(dim=-1) > 0).all()
    m, n = torch.arange(54, 131)[:, None], torch.arange(77)[None, :]
    want = _sdpa({"Q": x["Q"][:, :, 54:], "K": x["K"], "V": x["V"]}, attn_mask=n <= m - 54)
    torch.testing.assert_close(out[:, :, 54:], want, **TIGHT)


def test_sliding_window_wide_equals_causal():
    x = _inputs(ZOO["causal"])
    want = ZOO["causal"].torch_ref(x, {})
    torch.testing.assert_close(ZOO["sliding_window"].torch_ref(x, {"W": 131}), want, **TIGHT)
    torch.testing.assert_close(ZOO["sliding_window"].torch_ref(x, {"W": 10_000}), want, **TIGHT)


def test_sliding_window_width_one_returns_own_value():
    x = _inputs(ZOO["sliding_window"])
    out = ZOO["sliding_window"].torch_ref(x, {"W": 1})
    torch.testing.assert_close(out, x["V"][:, :, :77].double(), **TIGHT)


def test_prefix_lm_limits():
    x = _inputs(ZOO["prefix_lm"])
    prefix_lm = ZOO["prefix_lm"].torch_ref
    torch.testing.assert_close(prefix_lm(x, {"P": 0}), ZOO["causal"].torch_ref(x, {}), **TIGHT)
    torch.testing.assert_close(prefix_lm(x, {"P": 131}), ZOO["softmax"].torch_ref(x, {}), **TIGHT)


def test_alibi_matches_sdpa_float_mask():
    x = _inputs(ZOO["alibi"])
    m, n = torch.arange(77)[:, None], torch.arange(131)[None, :]
    slope = x["slope"].double()[:, None, None]
    mask = (-slope * (m - n)).masked_fill(n > m, -math.inf)
    torch.testing.assert_close(ZOO["alibi"].torch_ref(x, {}), _sdpa(x, attn_mask=mask), **TIGHT)
    torch.testing.assert_close(x["slope"], torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]))


def test_alibi_zero_slope_equals_causal():
    x = _inputs(ZOO["alibi"])
    x["slope"] = torch.zeros_like(x["slope"])
    torch.testing.assert_close(ZOO["alibi"].torch_ref(x, {}), ZOO["causal"].torch_ref(x, {}), **TIGHT)


def test_bias_matches_sdpa_float_mask():
    x = _inputs(ZOO["bias"])
    torch.testing.assert_close(ZOO["bias"].torch_ref(x, {}), _sdpa(x, attn_mask=x["B"].double()), **TIGHT)


def test_softcap():
    x = _inputs(ZOO["softcap"])
    softcap = ZOO["softcap"].torch_ref
    torch.testing.assert_close(softcap(x, {"c": 1e7}), ZOO["softmax"].torch_ref(x, {}), rtol=0, atol=1e-10)
    capped = 2.0 * torch.tanh(_scores(x["Q"], x["K"]) / 2.0)
    torch.testing.assert_close(softcap(x, {"c": 2.0}), torch.softmax(capped, -1) @ x["V"].double(), **TIGHT)


def test_gqa_equals_softmax_with_repeated_kv():
    x = _inputs(ZOO["gqa"])
    r = x["Q"].shape[1] // x["K"].shape[1]
    rep = {"Q": x["Q"], "K": x["K"].repeat_interleave(r, dim=1), "V": x["V"].repeat_interleave(r, dim=1)}
    torch.testing.assert_close(ZOO["gqa"].torch_ref(x, {}), ZOO["softmax"].torch_ref(rep, {}), **TIGHT)
    torch.testing.assert_close(ZOO["gqa"].torch_ref(x, {}), _sdpa(x, enable_gqa=True), **TIGHT)


def test_mqa_is_gqa_with_one_kv_head():
    x = _inputs(ZOO["gqa"], g=1)
    rep = {"Q": x["Q"], "K": x["K"].expand(-1, 4, -1, -1), "V": x["V"].expand(-1, 4, -1, -1)}
    torch.testing.assert_close(ZOO["gqa"].torch_ref(x, {}), ZOO["softmax"].torch_ref(rep, {}), **TIGHT)


def test_sinks_matches_formula_and_limit():
    x = _inputs(ZOO["sinks"])
    s, t = _scores(x["Q"], x["K"]), x["t"].double().view(1, 4, 1, 1)
    big = torch.maximum(s.amax(-1, keepdim=True), t)  # M = max(max_n s, t)
    p = torch.exp(s - big)
    want = (p @ x["V"].double()) / (p.sum(-1, keepdim=True) + torch.exp(t - big))
    out = ZOO["sinks"].torch_ref(x, {})
    torch.testing.assert_close(out, want, **TIGHT)
    # The generated sinks take a visible share of the mass.
    assert (out - ZOO["softmax"].torch_ref(x, {})).abs().max() > 0.01
    x["t"] = torch.full_like(x["t"], -math.inf)
    torch.testing.assert_close(ZOO["sinks"].torch_ref(x, {}), ZOO["softmax"].torch_ref(x, {}), **TIGHT)


def test_lse_exp_sum_consistency():
    x = _inputs(ZOO["lse"])
    o, lse = ZOO["lse"].torch_ref(x, {})
    assert lse.shape == (2, 4, 77) and lse.dtype == torch.float64
    s = _scores(x["Q"], x["K"])
    torch.testing.assert_close(torch.exp(s - lse[..., None]).sum(-1), torch.ones_like(lse), **TIGHT)
    torch.testing.assert_close(o, torch.exp(s - lse[..., None]) @ x["V"].double(), **TIGHT)
    torch.testing.assert_close(o, ZOO["softmax"].torch_ref(x, {}), **TIGHT)


def test_sigmoid_formula():
    x = _inputs(ZOO["sigmoid"])
    s = _scores(x["Q"], x["K"])
    want = (1.0 / (1.0 + torch.exp(-(s - math.log(131))))) @ x["V"].double()
    torch.testing.assert_close(ZOO["sigmoid"].torch_ref(x, {}), want, **TIGHT)


def test_relu_rows_by_hand():
    x = _inputs(ZOO["relu"])
    out = ZOO["relu"].torch_ref(x, {})
    s = _scores(x["Q"], x["K"])
    v = x["V"].double()
    for row in (0, 1, 40, 76):
        keys = row + 1  # causal, top-left: keys 0..row
        want = torch.einsum("bhn,bhne->bhe", torch.relu(s[:, :, row, :keys]), v[:, :, :keys]) / keys
        torch.testing.assert_close(out[:, :, row], want, **TIGHT)


def test_softplus_formula():
    x = _inputs(ZOO["softplus"])
    z = _scores(x["Q"], x["K"]) * math.log(131)
    p = torch.log1p(torch.exp(z))
    want = (p @ x["V"].double()) / p.sum(-1, keepdim=True)
    torch.testing.assert_close(ZOO["softplus"].torch_ref(x, {}), want, **TIGHT)


def test_gated():
    x = _inputs(ZOO["gated"])
    ungated = ZOO["softmax"].torch_ref(x, {})
    torch.testing.assert_close(ZOO["gated"].torch_ref(x, {}), ungated * torch.sigmoid(x["G"].double()), **TIGHT)
    x["G"] = torch.full_like(x["G"], 50.0)
    torch.testing.assert_close(ZOO["gated"].torch_ref(x, {}), ungated, rtol=0, atol=1e-12)


def test_differential_limits():
    x = _inputs(ZOO["differential"])
    diff = ZOO["differential"].torch_ref
    first = ZOO["softmax"].torch_ref({"Q": x["Q1"], "K": x["K1"], "V": x["V"]}, {})
    second = ZOO["softmax"].torch_ref({"Q": x["Q2"], "K": x["K2"], "V": x["V"]}, {})
    lam = x["lam"].double()[:, None, None]
    torch.testing.assert_close(diff(x, {}), first - lam * second, **TIGHT)
    same = {**x, "Q2": x["Q1"], "K2": x["K1"], "lam": torch.ones_like(x["lam"])}
    torch.testing.assert_close(diff(same, {}), torch.zeros_like(first), **TIGHT)


def _weights(name: str, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """The variant's [M, N] weight matrix (V = identity, e = n) and its scores."""
    x = _inputs(ZOO[name], b=1, h=1, e=131)
    x["V"] = torch.eye(131).view(1, 1, 131, 131)
    return ZOO[name].torch_ref(x, params)[0, 0], _scores(x["Q"], x["K"])[0, 0]


def test_signed_weights():
    w, s = _weights("signed")
    torch.testing.assert_close(w.abs().sum(-1), torch.ones(77, dtype=torch.float64), **TIGHT)
    assert torch.equal(torch.sign(w), torch.sign(s))
    assert (w < 0).any() and (w > 0).any()


def test_centered_relu_weights():
    w, s = _weights("centered_relu", eps=0.0)
    assert (w >= 0).all()
    assert torch.equal(w > 0, s > s.mean(-1, keepdim=True))
    torch.testing.assert_close(w.sum(-1), torch.ones(77, dtype=torch.float64), **TIGHT)
