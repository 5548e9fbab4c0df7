"""KV_SPLITS: the Triton kernel's key loop in parallel parts, merged by a combine kernel.

Numerics in Triton's interpreter against the float64 reference and against the
unsplit kernel (KV_SPLITS = 1), on tiny shapes (d = e = 16, 16 x 16 tiles): key
lengths that leave some parts without a tile, masks that hide whole parts or
whole rows, non-finite inputs (the variant that visits every key tile), and the
one-pass zoo variants. Then the refusal of a two-pass plan, the unsplit source
unchanged, and ahead-of-time builds of both kernels on every architecture.
"""
from __future__ import annotations

import math

import pytest
import torch

import einattn
from einattn.backends import get_backend, parse_target
from einattn.compiler import make_plan
from einattn.ir import UnsupportedError
from tests.helpers import as_tuple, ieee_mismatch, zoo_inputs

pytest.importorskip("triton")

TILES = {"BLOCK_M": 16, "BLOCK_N": 16}
SPLITS = (2, 3, 4)
ONE_PASS = ["softmax", "causal", "softcap", "sinks", "sigmoid", "gqa", "differential", "lse"]


def _sizes(name: str, m: int, n: int) -> dict:
    out = {"b": 1, "h": 2, "m": m, "n": n, "d": 16, "e": 16}
    if name == "gqa":
        out.update(h=4, g=2)
    return out


def _kernel(name: str, splits: int, **params):
    return einattn.compile(name, target="cuda", interpret=True, config={**TILES, "KV_SPLITS": splits}, **params)


def _rel(got, want) -> float:
    return max(((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30)).item()
               for g, w in zip(as_tuple(got), as_tuple(want)))


def _check(name: str, x: dict, splits=SPLITS, **params) -> None:
    want = einattn.compile(name, target="reference", **params)(**{k: v.double() for k, v in x.items()})
    one = _kernel(name, 1, **params)(**x)
    for s in splits:
        got = _kernel(name, s, **params)(**x)
        for g, w, o in zip(as_tuple(got), as_tuple(want), as_tuple(one)):
            assert ieee_mismatch(g, w, 1e-4) is None, (name, s, ieee_mismatch(g, w, 1e-4))
            assert ieee_mismatch(g, o, 1e-5) is None, (name, s, "vs KV_SPLITS=1", ieee_mismatch(g, o, 1e-5))


@pytest.mark.cpu
@pytest.mark.parametrize("name", ONE_PASS)
def test_splits_match_reference_and_unsplit(name):
    # 70 keys = 5 tiles: 3 parts of 2, 2, 1 tiles; 4 parts of 2, 2, 1 and none
    _check(name, zoo_inputs(name, dtype=torch.float32, **_sizes(name, 20, 70)))


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["softmax", "sinks"])
def test_fewer_key_tiles_than_parts(name):
    # 20 keys = 2 tiles for 3 and 4 parts (decoding-like: 3 query rows)
    _check(name, zoo_inputs(name, dtype=torch.float32, **_sizes(name, 3, 20)))


@pytest.mark.cpu
def test_masks_hiding_whole_parts_and_rows():
    # bottom-right causal with m > n: the first 7 rows see no key; the query blocks see different tiles
    x = zoo_inputs("causal_bottom_right", dtype=torch.float32, **_sizes("causal_bottom_right", 40, 33))
    _check("causal_bottom_right", x, splits=(2, 3))
    out = _kernel("causal_bottom_right", 3)(**x)
    assert torch.equal(out[:, :, :7], torch.zeros_like(out[:, :, :7]))
    # a narrow window: most parts of a row block see nothing; W = 0 hides every key
    x = zoo_inputs("sliding_window", dtype=torch.float32, **_sizes("sliding_window", 20, 70))
    _check("sliding_window", x, splits=(3,), W=4)
    out = _kernel("sliding_window", 4, W=0)(**x)
    assert torch.equal(out, torch.zeros_like(out))
    # prefix-LM classifies each tile at run time (a disjunction): the split bounds its loop too
    _check("prefix_lm", zoo_inputs("prefix_lm", dtype=torch.float32, **_sizes("prefix_lm", 20, 70)), splits=(3,))


@pytest.mark.cpu
def test_nonfinite_inputs_visit_every_tile_in_every_part():
    # a NaN in V at a key the causal mask hides reaches every row of the reference (0 * NaN): the
    # kernel switches to the variant that skips no tile (for_inputs), split the same way
    x = zoo_inputs("causal", dtype=torch.float32, **_sizes("causal", 20, 40))
    x["V"][0, 0, 39, 0] = math.nan
    _check("causal", x, splits=(3,))
    y = zoo_inputs("softmax", dtype=torch.float32, **_sizes("softmax", 20, 40))
    y["K"][0, 1, 5, 0] = math.inf
    y["Q"][0, 0, 3, 2] = math.nan
    _check("softmax", y, splits=(4,))


@pytest.mark.cpu
def test_two_pass_plan_refused_at_prepare():
    with pytest.raises(UnsupportedError, match=r"KV_SPLITS=2.*2 passes.*use KV_SPLITS=1"):
        _kernel("centered_relu", 2)
    _kernel("centered_relu", 1)     # the default still compiles


def _prepare(name: str, target: str, config: dict):
    t = parse_target(target)
    return get_backend(t).prepare(make_plan(einattn.load_spec(name)), t, config)


@pytest.mark.parametrize("name", ["softmax", "causal", "sinks", "differential", "prefix_lm"])
def test_unsplit_source_unchanged(name):
    """KV_SPLITS = 1 renders the kernel of before the split existed (checked byte for byte against
    the previous commit's renderer when the split was added): no split code, no second kernel."""
    base = _prepare(name, "cuda:sm_90", TILES).source
    assert _prepare(name, "cuda:sm_90", {**TILES, "KV_SPLITS": 1}).source == base
    for word in ("KV_SPLITS", "pid_s", "ws_", "_combine", "{#", "#}"):
        assert word not in base, word
    split = _prepare(name, "cuda:sm_90", {**TILES, "KV_SPLITS": 2}).source
    assert "#   KV_SPLITS" in split and split.count("@triton.jit\ndef einattn_") == 2


AOT_SIZES = {"b": 1, "h": 4, "g": 2, "m": 1, "n": 1024, "d": 64, "e": 64}


@pytest.mark.parametrize("name,target", [("softmax", "cuda:sm_80"), ("sinks", "cuda:sm_90"),
                                         ("causal", "rocm:gfx90a"), ("gqa", "rocm:gfx942")])
def test_aot_build_of_split_and_combine_kernels(name, target):
    art = _prepare(name, target, {"BLOCK_M": 16, "BLOCK_N": 64, "KV_SPLITS": 4})
    t = parse_target(target)
    ck = get_backend(t).build(art, AOT_SIZES, torch.float16)
    binary = "cubin" if t.kind == "cuda" else "hsaco"
    assert ck.files[binary] and ck.files[f"combine.{binary}"]
    assert ck.combine is not None and ck.combine.name.endswith("_combine")
    assert ck.resources["registers"] > 0 and ck.resources["combine"]["registers"] > 0
