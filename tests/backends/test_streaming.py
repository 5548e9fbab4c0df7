"""The streaming executor (the rewritten plan, key tile by key tile) against the reference."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.backends import built_targets
from tests.helpers import ZOO_NAMES, as_tuple, assert_rel_close, zoo_inputs
from tests.zoo import ZOO, sizes

pytestmark = pytest.mark.cpu

# BLOCK_N -> size overrides: 1 key per tile needs a short key axis to stay fast;
# 7 and 16 do not divide N = 131, 64 leaves a short last tile, 1000 is one tile.
BLOCKS = {1: {"n": 19, "m": 23}, 7: {}, 16: {}, 64: {}, 1000: {}}


@pytest.fixture(scope="module")
def references():
    return {name: einattn.compile(name, target="reference") for name in ZOO_NAMES}


@pytest.mark.parametrize("block_n", list(BLOCKS))
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_streaming_matches_reference_float64(references, name, block_n):
    x = zoo_inputs(name, seed=4, dtype=torch.float64, **BLOCKS[block_n])
    k = einattn.compile(name, target="streaming", config={"BLOCK_N": block_n})
    got = k(**x)
    for g in as_tuple(got):
        assert g.dtype == torch.float64
    assert_rel_close(got, references[name](**x), 1e-10, f"{name} BLOCK_N={block_n}")


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_streaming_float32_inputs(references, name):
    x = zoo_inputs(name, seed=5, dtype=torch.float32, m=40, n=75)
    got = einattn.compile(name, target="streaming", config={"BLOCK_N": 16})(**x)
    for g in as_tuple(got):
        assert g.dtype == torch.float32
    assert_rel_close(got, references[name](**x), 1e-4, f"{name} float32")


def test_streaming_default_block(references):
    x = zoo_inputs("softmax", m=10, n=150)
    k = einattn.compile("softmax", target="streaming")
    assert k.config == {}
    assert_rel_close(k(**x), references["softmax"](**x), 1e-10)


@pytest.mark.parametrize("name, shape, masked_rows", [
    ("causal_bottom_right", {"m": 50, "n": 20}, slice(0, 30)),
    ("sliding_window", {"m": 70, "n": 20}, slice(20 + 32 - 1, 70)),
])
@pytest.mark.parametrize("block_n", [1, 7, 64])
def test_streaming_fully_masked_rows(name, shape, masked_rows, block_n):
    x = ZOO[name].make_inputs(sizes(**shape), torch.Generator().manual_seed(6))
    out = einattn.compile(name, target="streaming", config={"BLOCK_N": block_n})(**x)
    assert not torch.isnan(out).any()
    assert torch.equal(out[:, :, masked_rows], torch.zeros_like(out[:, :, masked_rows]))


@pytest.mark.parametrize("g", [1, 4])
def test_streaming_gqa_groups(references, g):
    x = zoo_inputs("gqa", g=g, m=17, n=29)
    got = einattn.compile("gqa", target="streaming", config={"BLOCK_N": 8})(**x)
    assert_rel_close(got, references["gqa"](**x), 1e-10, f"gqa g={g}")


def test_streaming_param_override():
    x = zoo_inputs("softcap", m=17, n=29)
    got = einattn.compile("softcap", target="streaming", config={"BLOCK_N": 8}, c=5.0)(**x)
    assert_rel_close(got, ZOO["softcap"].torch_ref(x, {"c": 5.0}), 1e-10, "softcap c=5")


@pytest.mark.parametrize("config, phrase", [
    ({"BLOCK_M": 16}, "config key 'BLOCK_M' is not understood by the streaming backend; it accepts: BLOCK_N"),
    ({"BLOCK_N": 0}, "must be a positive int"),
    ({"BLOCK_N": 16.0}, "must be a positive int"),
    ({"BLOCK_N": True}, "must be a positive int"),
])
def test_bad_config(config, phrase):
    with pytest.raises(einattn.UnsupportedError, match=phrase.replace("(", r"\(")):
        einattn.compile("softmax", target="streaming", config=config)


def test_reference_takes_no_config():
    with pytest.raises(einattn.UnsupportedError, match="not understood by the reference backend"):
        einattn.compile("softmax", target="reference", config={"BLOCK_N": 16})


def test_output_keeping_the_key_index_is_rejected():
    text = ("einattn: 1\nname: scores\ninputs:\n  Q: [m, d]\n  K: [n, d]\ncascade:\n"
            "  - S[m,n] = Q[m,d] * K[n,d]\noutputs: [S]\n")
    einattn.compile(text, target="reference")            # materialising executors may return it
    with pytest.raises(einattn.UnsupportedError, match="keeps the key index 'n'"):
        einattn.compile(text, target="streaming")


def test_unbuilt_target_says_so(monkeypatch):
    """A registered target whose backend module is absent says "not built yet" and lists what runs."""
    import einattn.backends as backends
    monkeypatch.setitem(backends.REGISTRY, "rocm",
                        ("einattn.backends.no_such_module", "X", "the ROCm backend on Triton"))
    assert "rocm" not in built_targets()
    with pytest.raises(einattn.UnsupportedError, match="not built yet.*targets that run today: reference"):
        einattn.compile("softmax", target="rocm:gfx942")


@pytest.mark.parametrize("target, phrase", [
    ("tpu", "unknown target 'tpu'"),
    ("reference:x", "takes no architecture suffix"),
    (3, "target must be a string"),
])
def test_bad_targets(target, phrase):
    with pytest.raises(einattn.UnsupportedError, match=phrase):
        einattn.compile("softmax", target=target)
