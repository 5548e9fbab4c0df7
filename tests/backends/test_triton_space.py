"""The Triton search space and performance model: pure functions, nothing runs on a GPU.

Every candidate passes the config checks and names its program, the default (as it
resolves at the workload) comes first, short-query (decoding) workloads get KV_SPLITS
and decode-program candidates and long-query ones do not, a config that
needs more shared memory than a smaller GPU has is pruned there, and the model
ranks configs deterministically (a split above the unsplit kernel when a few
heads of one decoding step would leave most SMs idle).
"""
from __future__ import annotations

import pytest

import einattn
from einattn.backends import get_backend, parse_target
from einattn.backends.base import Workload
from einattn.compiler import make_plan
from einattn.compiler.kernel_plan import make_kernel_plan
from einattn.ir import UnsupportedError

pytest.importorskip("triton")

from einattn.backends.triton.config import TritonConfig  # noqa: E402
from einattn.backends.triton.config import resolve  # noqa: E402
from einattn.backends.triton.hardware import all_targets  # noqa: E402
from einattn.backends.triton.model import predict  # noqa: E402

DECODE = Workload.of({"b": 1, "h": 8, "m": 1, "n": 8192, "d": 128, "e": 128}, "float16")
PREFILL = Workload.of({"b": 4, "h": 32, "m": 4096, "n": 4096, "d": 128, "e": 128}, "float16")


def _hw(name: str):
    return next(t for t in all_targets() if t.name == name)


def _kp(name: str):
    return make_kernel_plan(make_plan(einattn.load_spec(name)))


@pytest.mark.parametrize("gpu", ["H100", "A100", "MI300X", "MI250X"])
@pytest.mark.parametrize("workload", [DECODE, PREFILL], ids=["decode", "prefill"])
@pytest.mark.parametrize("spec", ["softmax", "centered_relu"])
def test_every_candidate_validates_default_first(spec, workload, gpu):
    kp, hw = _kp(spec), _hw(gpu)
    space = TritonConfig.space(kp, workload, hw)
    default = resolve(kp, TritonConfig(), workload.as_dict(), {}, hw)[0]
    assert space[0] == default and len(space) == len(set(space)) > 20
    assert default.PROGRAM == ("decode" if workload is DECODE else "tile")
    for c in space:
        c.validate(hw, kp, workload)
        assert c.PROGRAM in ("tile", "decode") and c.PACK >= 1 and c.KV_SPLITS >= 1
    if hw.kind == "rocm":
        assert {c.num_stages for c in space} <= {1, 2}
    assert TritonConfig.space(kp, workload, hw) == space      # deterministic


def test_decode_gets_splits_prefill_does_not():
    kp, hw = _kp("softmax"), _hw("H100")
    decode = TritonConfig.space(kp, DECODE, hw)
    assert {c.KV_SPLITS for c in decode} == {1, 2, 4, 8, 16}
    assert {c.BLOCK_M for c in decode} == {16, 64}        # 16 for one query row; 64 is the default
    assert {c.KV_SPLITS for c in TritonConfig.space(kp, PREFILL, hw)} == {1}
    assert {c.PROGRAM for c in decode} == {"tile", "decode"}
    assert {c.PROGRAM for c in TritonConfig.space(kp, PREFILL, hw)} == {"tile"}
    # a two-pass plan cannot be split, however few its programs
    assert {c.KV_SPLITS for c in TritonConfig.space(_kp("centered_relu"), DECODE, hw)} == {1}


def test_shared_memory_prunes_on_a_smaller_gpu():
    kp, big = _kp("softmax"), TritonConfig(64, 128, 4, 3, 1, "tile", 1)
    # three fp16 stages of 128 keys x (128 + 128) dims: 192 KiB; the A100 has 163 KiB per block
    assert big in TritonConfig.space(kp, PREFILL, _hw("H100"))
    assert big not in TritonConfig.space(kp, PREFILL, _hw("A100"))
    with pytest.raises(UnsupportedError, match="shared memory"):
        big.validate(_hw("A100"), kp, PREFILL)


def test_validate_split_rules():
    hw = _hw("H100")
    short = Workload.of({"b": 1, "h": 8, "m": 1, "n": 100, "d": 64, "e": 64}, "float16")
    with pytest.raises(UnsupportedError, match=r"only 2 tiles.*KV_SPLITS <= 2"):
        TritonConfig(16, 64, KV_SPLITS=4).validate(hw, _kp("softmax"), short)
    TritonConfig(16, 64, KV_SPLITS=2).validate(hw, _kp("softmax"), short)
    with pytest.raises(UnsupportedError, match="one-pass"):
        TritonConfig(16, 64, KV_SPLITS=2).validate(hw, _kp("centered_relu"), short)
    with pytest.raises(UnsupportedError, match="float64"):
        TritonConfig().validate(hw, _kp("softmax"), Workload.of(dict(short.sizes), "float64"))


def test_model_ranks_a_split_first_for_decode_and_is_deterministic():
    kp, hw = _kp("softmax"), _hw("H100")
    space = TritonConfig.space(kp, DECODE, hw)
    times = {c: predict(kp, c, DECODE, hw)["seconds"] for c in space}
    best = min(space, key=lambda c: (times[c], space.index(c)))
    assert best.KV_SPLITS > 1
    assert min(t for c, t in times.items() if c.KV_SPLITS > 1) < min(t for c, t in times.items()
                                                                    if c.KV_SPLITS == 1) / 2
    one = predict(kp, best, DECODE, hw)
    assert one == predict(kp, best, DECODE, hw)
    assert one["model"] == "roofline+occupancy/1" and one["bound"] == "memory" and one["waves"] >= 1
    assert one["occupancy"] >= 1 and one["resources"] == "estimated"
    big = predict(kp, TritonConfig(128, 64, 8, 3), PREFILL, hw)
    assert big["waves"] > 1 and big["flops"] == 2 * 2 * 4 * 32 * 4096 * 4096 * 128
    # long queries: fewer query blocks re-read the keys fewer times
    assert big["seconds"] < predict(kp, TritonConfig(16, 64, 8, 3), PREFILL, hw)["seconds"]


def test_backend_space_default_and_fingerprint():
    t = parse_target("cuda:sm_90")
    b, plan = get_backend(t), make_plan(einattn.load_spec("softmax"))
    assert "KV_SPLITS" in b.config_keys
    space = b.space(plan, t, DECODE)
    default = b.default_config(plan, t, DECODE)
    # one head of 8 on 132 SMs: the decode program, the key loop in 8 parts (compiler.decode.split_count)
    assert space[0] == default == {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "KV_SPLITS": 8,
                                   "PROGRAM": "decode", "PACK": 1}
    assert b.default_config(plan, t, PREFILL) == {**default, "KV_SPLITS": 1, "PROGRAM": "tile"}
    assert all(set(c) == set(b.config_keys) for c in space)
    fp = b.fingerprint(t)
    assert fp["arch"] == "sm_90" and fp["hardware"] == "H100" and fp["kind"] == "cuda"
    assert fp["triton"] and len(fp["template"]) == 16 and fp == b.fingerprint(t)


def test_model_time_uses_the_compiled_kernel():
    t = parse_target("cuda:sm_90")
    b, plan = get_backend(t), make_plan(einattn.load_spec("softmax"))
    w = Workload.of({"b": 1, "h": 4, "m": 1, "n": 2048, "d": 64, "e": 64}, "float16")
    out = b.model_time(plan, t, {"BLOCK_M": 16, "BLOCK_N": 64, "KV_SPLITS": 4}, w)
    assert out["resources"] == "compiled" and out["registers"] > 0 and out["seconds"] > 0
    with pytest.raises(UnsupportedError, match="KV_SPLITS"):
        b.model_time(plan, t, {"BLOCK_M": 16, "BLOCK_N": 64, "KV_SPLITS": 64}, w)


GQA_DECODE = Workload.of({"b": 1, "h": 32, "g": 4, "m": 1, "n": 8192, "d": 128, "e": 128}, "float16")


def test_decode_candidates_pack_the_group():
    kp, hw = _kp("gqa"), _hw("H100")
    space = TritonConfig.space(kp, GQA_DECODE, hw, {"r": 8})
    # r = h // g = 8: every divisor of the group, each with the smallest row block that holds it
    assert {c.PACK for c in space if c.PROGRAM == "decode"} == {1, 2, 4, 8}
    assert {(c.PACK, c.BLOCK_M) for c in space if c.PROGRAM == "decode" and c != space[0]} == \
        {(1, 16), (2, 16), (4, 16), (8, 16)}
    assert space[0].PROGRAM == "decode" and space[0].PACK == 8


def test_model_reads_kv_once_per_row_block():
    kp, hw = _kp("gqa"), _hw("H100")
    one = predict(kp, TritonConfig(16, 64, 4, 2, 1, "decode", 1), GQA_DECODE, hw)
    packed = predict(kp, TritonConfig(16, 64, 4, 2, 1, "decode", 8), GQA_DECODE, hw)
    kv = 2 * 4 * 8192 * 128 * 2                     # K and V of the 4 KV heads, fp16
    assert kv <= packed["bytes"] < 1.1 * kv and one["bytes"] > 7.9 * kv    # each head re-reads its KV head
    assert packed["programs"] == 4 and one["programs"] == 32 and packed["bound"] == "memory"
    # with the SMs filled by splits (64 and 128 programs), reading K/V once per group is faster
    fill = predict(kp, TritonConfig(16, 64, 4, 2, 16, "decode", 8), GQA_DECODE, hw)
    assert fill["seconds"] < predict(kp, TritonConfig(16, 64, 4, 2, 4, "decode", 1), GQA_DECODE, hw)["seconds"] / 2
    # the tile program computes (and reads K/V for) a 16-row tile per head: the decode program wins
    tile = predict(kp, TritonConfig(16, 64, 4, 2, 16, "tile", 1), GQA_DECODE, hw)
    assert fill["seconds"] < tile["seconds"]
