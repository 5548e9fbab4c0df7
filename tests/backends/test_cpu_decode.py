"""The CPU decode program (compiler/decode.py, backends/cpu/decode.py): row blocks of PACK
heads x BLOCK_M query rows, tiles vectorised along the keys, against the float64 reference.

BLOCK_N = 16 so that 77 and 131 keys make several key tiles and a partial last one
(neither is a multiple of any tile size); each (variant, config) compiles once per
query block (1, 4 and 16 rows for m = 1, 3 and 16).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import einattn
from einattn.backends.cpu.config import CpuConfig, DECODE_MAX_ROWS, resolve
from einattn.compiler import make_kernel_plan, make_plan
from einattn.compiler.decode import Packing, choose_program, describe, pack_size, packing, split_count
from einattn.compiler.splits import split_refusal
from einattn.specs import load_spec
from tests.helpers import ZOO_NAMES, assert_rel_close, ieee_mismatch, zoo_inputs

REL = 1e-4                  # against the float64 reference (as tests/backends/test_cpu.py)
DECODE = {"PROGRAM": "decode", "BLOCK_N": 16, "PV_E": 16}


def kplan(name: str):
    return make_kernel_plan(make_plan(load_spec(name)))


@functools.lru_cache(maxsize=None)
def cpu_kernel(name: str, **config):
    return einattn.compile(name, target="cpu", config=config)


def kernel(name: str, config: dict):
    return cpu_kernel(name, **config)


@functools.lru_cache(maxsize=None)
def ref_kernel(name: str):
    return einattn.compile(name, target="reference")


def reference(name: str, x: dict):
    return ref_kernel(name)(**{k: v.double() for k, v in x.items()})


def programs_run(k) -> set:
    """The (program, query block, pack) of each config the kernel resolved calls to."""
    return {(c.PROGRAM, c.BLOCK_M, c.PACK) for c in k._artifact.resolved}


# -- the zoo --------------------------------------------------------------------------

@pytest.mark.cpu
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_decode_program_against_reference(name):
    k = kernel(name, DECODE)
    for m, n in ((1, 131), (3, 77), (16, 131)):
        x = zoo_inputs(name, dtype=torch.float32, b=2, h=4, g=2, m=m, n=n)
        assert_rel_close(k(**x), reference(name, x), REL, f"{name} decode m={m} n={n}")
    assert {(p, bm) for p, bm, _ in programs_run(k)} == {("decode", 1), ("decode", 4), ("decode", 16)}


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["softmax", "causal_bottom_right", "gqa", "sinks", "lse"])
def test_auto_takes_decode_for_short_queries_and_tiles_for_long(name):
    k = kernel(name, {"BLOCK_N": 16, "PV_E": 16})
    for m in (1, 5, DECODE_MAX_ROWS, DECODE_MAX_ROWS + 1, 40):
        x = zoo_inputs(name, dtype=torch.float32, b=1, h=4, g=2, m=m, n=77)
        assert_rel_close(k(**x), reference(name, x), REL, f"{name} auto m={m}")
    runs = programs_run(k)
    assert {bm for p, bm, _ in runs if p == "decode"} == {1, 8, 16}
    # m = 17 and 40: the tile program, its query block the length rounded up within 16..64
    assert {bm for p, bm, _ in runs if p == "tile"} == {32, 64}


# -- GQA packing and the split key loop -------------------------------------------------

@pytest.mark.cpu
@pytest.mark.parametrize("pack", [1, 2, 4])
@pytest.mark.parametrize("splits", [1, 3])
def test_gqa_packs_heads_of_a_group(pack, splits):
    k = kernel("gqa", DECODE | {"PACK": pack, "KV_SPLITS": splits})
    for m, n in ((1, 131), (3, 200)):
        x = zoo_inputs("gqa", dtype=torch.float32, b=2, h=8, g=2, m=m, n=n)        # r = 4
        assert_rel_close(k(**x), reference("gqa", x), REL, f"gqa PACK={pack} KV_SPLITS={splits} m={m}")
    assert {p for _, _, p in programs_run(k)} == {pack}


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["softmax", "sinks", "lse", "alibi", "softcap"])
def test_split_decode_matches_reference(name):
    k = kernel(name, DECODE | {"KV_SPLITS": 3})
    for b, h, m, n in ((1, 2, 1, 131), (1, 1, 2, 20), (2, 2, 1, 1)):
        x = zoo_inputs(name, dtype=torch.float32, b=b, h=h, m=m, n=n)
        assert_rel_close(k(**x), reference(name, x), REL, f"{name} decode KV_SPLITS=3 {(b, h, m, n)}")


@pytest.mark.cpu
def test_bottom_right_causal_hides_rows_and_keys():
    """m > n: the first m - n rows see no key and are exactly 0; m < n: every row sees its prefix."""
    k = kernel("causal_bottom_right", DECODE)
    x = zoo_inputs("causal_bottom_right", dtype=torch.float32, b=1, h=2, m=16, n=5)
    out = k(**x)
    assert torch.equal(out[:, :, :11], torch.zeros_like(out[:, :, :11]))
    assert_rel_close(out, reference("causal_bottom_right", x), REL)


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["causal_bottom_right", "softmax"])
def test_nonfinite_inputs(name):
    """NaN and +-inf in any input, also at keys the mask hides: the reference's NaN and inf."""
    k = kernel(name, DECODE | {"KV_SPLITS": 2})
    for m in (1, 3):        # m = 1: the mask hides no key, so the launcher checks nothing
        x = zoo_inputs(name, dtype=torch.float32, b=1, h=2, m=m, n=70)
        for inp in x:
            for value in (math.nan, math.inf, -math.inf):
                for at in (0.1, 0.97):
                    y = {k_: v.clone() for k_, v in x.items()}
                    y[inp].view(-1)[int(at * y[inp].numel())] = value
                    msg = ieee_mismatch(k(**y), reference(name, y), 1e-3)
                    assert msg is None, f"{name} decode m={m}, {inp} = {value} at {at}: {msg}"


# -- what is chosen, and what is refused -----------------------------------------------

def test_packing_finds_the_group_index():
    assert packing(kplan("gqa")) == Packing("h", "r")
    assert packing(kplan("softmax")) == Packing(None)
    assert pack_size(packing(kplan("gqa")), {"h": 32, "g": 8}, {"r": 4}) == 4
    assert pack_size(packing(kplan("gqa")), {"h": 48, "g": 2}, {"r": 24}) == 12     # largest divisor <= 16


def test_resolve_fills_what_the_user_left_open():
    kp = kplan("gqa")
    sizes = {"b": 1, "h": 32, "g": 8, "m": 1, "n": 8192, "d": 128, "e": 128}
    cfg = resolve(CpuConfig(), frozenset(), kp, sizes, {"r": 4}, cores=2)
    assert (cfg.PROGRAM, cfg.BLOCK_M, cfg.PACK, cfg.KV_SPLITS) == ("decode", 1, 4, 1)
    # one task: the key loop is split to keep both cores busy (2 tasks per core)
    one = resolve(CpuConfig(), frozenset(), kp, sizes | {"h": 4, "g": 1}, {"r": 4}, cores=2)
    assert one.KV_SPLITS == 4
    # given keys are kept
    kept = resolve(CpuConfig(BLOCK_N=64, KV_SPLITS=1), frozenset({"BLOCK_N", "KV_SPLITS"}), kp,
                   sizes | {"h": 4, "g": 1}, {"r": 4}, cores=2)
    assert (kept.BLOCK_N, kept.KV_SPLITS) == (64, 1)
    assert resolve(CpuConfig(PROGRAM="tile"), frozenset({"PROGRAM"}), kp, sizes, {"r": 4}, 2).PROGRAM == "tile"
    assert choose_program(kp, {"m": 17}, max_rows=16).program == "tile"


def test_multi_pass_plan_decodes_unsplit():
    kp = kplan("centered_relu")
    assert split_refusal(kp) is not None
    assert split_count(kp, tasks=1, workers=16, key_tiles=100) == 1
    sizes = {"b": 1, "h": 1, "m": 1, "n": 8192, "d": 64, "e": 64}
    assert resolve(CpuConfig(), frozenset(), kp, sizes, {}, cores=16).KV_SPLITS == 1


@pytest.mark.cpu
def test_refusals_name_the_fix():
    x = zoo_inputs("gqa", dtype=torch.float32, b=1, h=4, g=2, m=1, n=20)     # r = 2
    with pytest.raises(einattn.UnsupportedError, match=r"PACK=4 must divide r=2"):
        kernel("gqa", DECODE | {"PACK": 4})(**x)
    y = zoo_inputs("softmax", dtype=torch.float32, b=1, h=4, m=1, n=20)
    with pytest.raises(einattn.UnsupportedError, match=r"read per grid index.*use PACK=1"):
        kernel("softmax", DECODE | {"PACK": 2})(**y)
    with pytest.raises(einattn.UnsupportedError, match=r"PROGRAM='fast' must be one of auto, tile, decode"):
        einattn.compile("softmax", target="cpu", config={"PROGRAM": "fast"})
    with pytest.raises(einattn.UnsupportedError, match=r"PACK=-1 .*>= 0"):
        einattn.compile("softmax", target="cpu", config={"PACK": -1})


def test_explain_names_the_program():
    kp = kplan("gqa")
    text = describe(kp, {"b": 1, "h": 32, "g": 8, "m": 1, "n": 8192}, {"r": 4}, max_rows=16)
    assert "program: decode" in text and "4 head(s) x 1 query row(s)" in text
    assert "program: tile" in describe(kp, {"m": 2048}, {"r": 4}, max_rows=16)
    assert "PROGRAM=decode set in the config" in describe(kp, {"m": 2048}, {"r": 4}, forced="decode")


def test_decode_source_vectorises_the_keys():
    from einattn.backends.cpu.render import render
    kp = kplan("gqa")
    src = render(kp, CpuConfig(PROGRAM="decode", BLOCK_M=1, PACK=4, PV_RM=4, BLOCK_N=64), {"d": 64, "e": 64}, 16)
    assert "t_S = T.alloc_buffer((4, 64)" in src           # [rows, keys]
    assert "for lj in T.vectorized(64)" in src
    assert "in_K[g_b, T.floordiv(g_h * 4, T.Cast(\"int32\", p_r))" in src     # the pack's first head
