"""The float64 reference executor against the independent PyTorch oracles of tests/zoo.py."""
from __future__ import annotations

import pytest
import torch

import einattn
from tests.helpers import ZOO_NAMES, as_tuple, assert_rel_close, reference_outputs, zoo_inputs
from tests.zoo import ZOO, sizes

pytestmark = pytest.mark.cpu

REL = 1e-10
# id -> size overrides (b=2, h=4, m=77, n=131, d=16, e=16, g=2 otherwise)
SHAPES = {
    "default": {},
    "m_gt_n": {"m": 131, "n": 77},
    "batch_1": {"b": 1, "m": 20, "n": 33},
    "tiny": {"b": 1, "h": 1, "m": 1, "n": 1, "d": 1, "e": 1, "g": 1},
}


def _oracle(name, x, params=None):
    v = ZOO[name]
    return v.torch_ref(x, {**v.params, **(params or {})})


@pytest.fixture(scope="module")
def kernels():
    return {name: einattn.compile(name, target="reference") for name in ZOO_NAMES}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_reference_matches_oracle(kernels, name, shape):
    x = ZOO[name].make_inputs(sizes(**SHAPES[shape]), torch.Generator().manual_seed(1))
    got = kernels[name](*x.values())
    for g in as_tuple(got):
        assert g.dtype == torch.float64
    assert_rel_close(got, _oracle(name, x), REL, f"{name} {shape}")


@pytest.mark.parametrize("g", [1, 2, 4])
def test_gqa_groups(kernels, g):
    """MQA (g=1), grouped (g=2) and plain multi-head (g=h)."""
    x = ZOO["gqa"].make_inputs(sizes(g=g, m=31, n=45), torch.Generator().manual_seed(2))
    assert_rel_close(kernels["gqa"](**x), _oracle("gqa", x), REL, f"gqa g={g}")


def test_gqa_with_g_equal_h_is_softmax(kernels):
    x = zoo_inputs("gqa", g=4, m=31, n=45, dtype=torch.float64)
    assert_rel_close(kernels["gqa"](**x), kernels["softmax"](**x), 1e-13)


@pytest.mark.parametrize("name, shape, masked_rows", [
    # causal_bottom_right with M > N: query m sees n <= m - (M - N), so rows m < M - N see nothing
    ("causal_bottom_right", {"m": 131, "n": 77}, slice(0, 131 - 77)),
    # sliding window W=32 with M > N + W: rows m >= N + W - 1 see nothing
    ("sliding_window", {"m": 131, "n": 77}, slice(77 + 32 - 1, 131)),
])
def test_fully_masked_rows_are_exact_zeros(kernels, name, shape, masked_rows):
    x = ZOO[name].make_inputs(sizes(**shape), torch.Generator().manual_seed(3))
    out = kernels[name](**x)
    assert not torch.isnan(out).any()
    assert torch.equal(out[:, :, masked_rows], torch.zeros_like(out[:, :, masked_rows]))
    rest = torch.ones(out.shape[2], dtype=torch.bool)
    rest[masked_rows] = False
    assert (out[:, :, rest].abs().amax(dim=-1) > 0).all()       # every other row sees a key
    assert_rel_close(out, _oracle(name, x), REL, name)


def test_positional_and_keyword_calls_agree(kernels):
    x = zoo_inputs("alibi", m=12, n=17)
    k = kernels["alibi"]
    a = k(*x.values())
    b = k(**x)
    c = k(x["Q"], x["K"], slope=x["slope"], V=x["V"])
    assert torch.equal(a, b) and torch.equal(a, c)


def test_multiple_outputs_are_a_tuple_in_order(kernels):
    x = zoo_inputs("lse", m=12, n=17)
    out = kernels["lse"](**x)
    assert isinstance(out, tuple) and len(out) == 2
    o, lse = out
    assert o.shape == (2, 4, 12, 16) and lse.shape == (2, 4, 12)
    assert_rel_close(out, _oracle("lse", x), REL, "lse")


@pytest.mark.parametrize("name, params", [
    ("softcap", {"c": 5.0}),
    ("softmax", {"scale": 0.3}),
    ("sliding_window", {"W": 5}),
    ("prefix_lm", {"P": 3}),
    ("causal_bottom_right", {"off": 0}),
    ("sigmoid", {"beta": 0.0}),
    ("centered_relu", {"eps": 1.0, "inv_n": 0.5}),
    ("softplus", {"ln_n": 1.0}),
    ("gqa", {"r": 4}),
])
def test_param_overrides(name, params):
    x = zoo_inputs(name, m=21, n=34)
    k = einattn.compile(name, target="reference", **params)
    assert k.params == params
    got = k(**x)
    assert_rel_close(got, _oracle(name, x, params), REL, f"{name} {params}")
    default = einattn.compile(name, target="reference")(**x)
    assert not torch.equal(as_tuple(got)[0], as_tuple(default)[0])


def test_float32_inputs_compute_in_float64(kernels):
    x32 = zoo_inputs("softmax", m=10, n=11, dtype=torch.float32)
    x64 = {k: v.double() for k, v in x32.items()}
    a, b = kernels["softmax"](**x32), kernels["softmax"](**x64)
    assert a.dtype == torch.float64 and torch.equal(a, b)


def test_index_only_statement_binds_its_size():
    """relu's count C[b,h,m] = where(n <= m, 1.0, 0.0) uses n with no tensor carrying it."""
    x = zoo_inputs("relu", m=5, n=3)
    out = einattn.compile("relu", target="reference")(**x)
    assert_rel_close(out, _oracle("relu", x), REL, "relu m > n")


def test_kernel_repr_and_attributes(kernels):
    k = kernels["centered_relu"]
    assert repr(k) == "Kernel('centered_relu', target='reference', passes=2)"
    assert str(k.target) == "reference" and k.plan.passes == 2 and k.spec.name == "centered_relu"


def test_sum_with_divisor_on_an_unsummed_index():
    text = ("einattn: 1\nname: t\ninputs:\n  K: [b, n]\n  t: [m]\ncascade:\n"
            "  - T[m,n] = K[b,n] / t[m]\noutputs: [T]\n")
    c = einattn.load_spec(text)
    x = {"K": torch.randn(2, 4, dtype=torch.float64), "t": torch.rand(3, dtype=torch.float64) + 1}
    got = reference_outputs(c, x)["T"]
    torch.testing.assert_close(got, x["K"].sum(0)[None, :] / x["t"][:, None])


@pytest.mark.parametrize("target", ["reference", "streaming"])
def test_zero_keys(target):
    k = einattn.compile("softmax", target=target)
    q, kv = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 0, 4)
    try:
        out = k(q, kv, kv)
    except einattn.EinattnError:
        return
    assert torch.equal(out, torch.zeros_like(out))  # no keys: every row is fully masked
