"""The CPU search space and its hard constraints (pure: nothing is compiled).

Hosts and caches are plain data here, so the results do not depend on the machine
the tests run on: an AVX-512 host (16 lanes, 32 registers) and an AVX2 one (8, 16).
"""
from __future__ import annotations

import dataclasses

import pytest

import einattn
from einattn.backends.base import Workload
from einattn.backends.cpu.config import CpuConfig, resolve, working_set, workload_params
from einattn.backends.cpu.host import CacheSizes, HostCpu, read_cache_sizes
from einattn.compiler import make_kernel_plan, make_plan
from einattn.specs import load_spec

AVX512 = HostCpu("znver4", "x86_64-unknown-linux-gnu", 512, False)
AVX2 = HostCpu("haswell", "x86_64-unknown-linux-gnu", 256, False)
CACHES = CacheSizes(l1d=48 << 10, l2=1 << 20, l3=32 << 20, cores=16)

DECODE = Workload.of({"b": 1, "h": 8, "m": 1, "n": 8192, "d": 128, "e": 128})
PREFILL = Workload.of({"b": 4, "h": 16, "m": 2048, "n": 2048, "d": 64, "e": 64})
SMALL = Workload.of({"b": 1, "h": 8, "m": 77, "n": 131, "d": 16, "e": 16, "g": 2})
WORKLOADS = {"decode": DECODE, "prefill": PREFILL, "small": SMALL}


def kplan(name: str):
    return make_kernel_plan(make_plan(load_spec(name)))


@pytest.mark.parametrize("host", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("workload", list(WORKLOADS), ids=list(WORKLOADS))
@pytest.mark.parametrize("name", ["softmax", "differential", "centered_relu", "sinks"])
def test_every_candidate_validates_default_first_no_duplicates(name, workload, host):
    kp, w = kplan(name), WORKLOADS[workload]
    space = CpuConfig.space(kp, w, host, CACHES)
    sizes = w.as_dict()
    # first: what an untuned call runs (the host's defaults resolved for the workload)
    assert space[0] == resolve(CpuConfig.default(host), frozenset(), kp, sizes, workload_params(kp, sizes), CACHES.cores)
    assert all(c.PROGRAM in ("tile", "decode") for c in space)
    assert len(set(space)) == len(space)
    assert 10 <= len(space) <= 200, len(space)
    for cfg in space:
        cfg.validate(host, w, kp, CACHES)
    assert space == CpuConfig.space(kp, w, host, CACHES)          # deterministic


def test_default_is_todays_config_on_avx512():
    assert CpuConfig.default(AVX512) == CpuConfig()
    assert CpuConfig().KV_SPLITS == 1
    assert CpuConfig.default(AVX2).validate(AVX2) == []


def test_bf16_workloads_time_both_products():
    """bf16 on a host with vdpbf16ps: each tile config with the pair products and widened (DOT=fp32);
    fp32 workloads and hosts without AVX512_BF16 get only the default DOT."""
    kp = kplan("softmax")
    bf16 = dataclasses.replace(PREFILL, dtype="bfloat16")
    zen5 = dataclasses.replace(AVX512, mcpu="znver5", has_bf16=True)
    space = CpuConfig.space(kp, bf16, zen5, CACHES)
    assert space[0].DOT == "auto"
    assert {c.DOT for c in space} == {"auto", "fp32"}
    assert {dataclasses.replace(c, DOT="auto") for c in space if c.DOT == "fp32"} == {c for c in space if c.DOT == "auto"}
    assert {c.DOT for c in CpuConfig.space(kp, PREFILL, zen5, CACHES)} == {"auto"}
    assert {c.DOT for c in CpuConfig.space(kp, bf16, AVX512, CACHES)} == {"auto"}


def test_decoding_gets_splits_many_tasks_do_not():
    kp = kplan("softmax")
    decode = CpuConfig.space(kp, DECODE, AVX512, CACHES)
    assert {c.KV_SPLITS for c in decode} == {1, 2, 4, 8}
    assert {c.KV_SPLITS for c in CpuConfig.space(kp, PREFILL, AVX512, CACHES)} == {1}
    # more tasks than 4 x the cores: no split, even with long key rows
    busy = Workload.of({"b": 8, "h": 32, "m": 1, "n": 8192, "d": 128, "e": 128})
    assert {c.KV_SPLITS for c in CpuConfig.space(kp, busy, AVX512, CACHES)} == {1}


def test_every_part_gets_a_key_tile():
    short = Workload.of({"b": 1, "h": 1, "m": 1, "n": 100, "d": 64, "e": 64})
    for c in CpuConfig.space(kplan("softmax"), short, AVX512, CACHES):
        assert -(-100 // c.BLOCK_N) >= c.KV_SPLITS, c


def test_short_queries_get_small_query_blocks():
    space = CpuConfig.space(kplan("softmax"), DECODE, AVX512, CACHES)
    assert {c.BLOCK_M for c in space if c.PROGRAM == "tile"} == {16}
    assert {c.BLOCK_M for c in space if c.PROGRAM == "decode"} == {1}
    assert {c.PROGRAM for c in CpuConfig.space(kplan("softmax"), PREFILL, AVX512, CACHES)} == {"tile"}


def test_decode_space_packs_the_kv_group():
    gqa = Workload.of({"b": 1, "h": 32, "g": 8, "m": 1, "n": 8192, "d": 128, "e": 128})
    space = CpuConfig.space(kplan("gqa"), gqa, AVX512, CACHES)
    assert {c.PACK for c in space if c.PROGRAM == "decode"} == {1, 2, 4}        # divisors of r = 4
    assert space[0].PROGRAM == "decode" and space[0].PACK == 4
    assert {c.PACK for c in CpuConfig.space(kplan("softmax"), DECODE, AVX512, CACHES) if c.decode} == {1}


@pytest.mark.parametrize("workload", list(WORKLOADS), ids=list(WORKLOADS))
def test_multi_pass_plan_never_split(workload):
    kp = kplan("centered_relu")
    assert len(kp.passes) > 1
    assert {c.KV_SPLITS for c in CpuConfig.space(kp, WORKLOADS[workload], AVX512, CACHES)} == {1}


def test_l2_pruning():
    kp = kplan("softmax")
    wide = Workload.of({"b": 1, "h": 8, "m": 4096, "n": 4096, "d": 256, "e": 256})
    big = CpuConfig(BLOCK_M=128, BLOCK_N=256, PROGRAM="tile")
    assert working_set(kp, big, wide) > CACHES.l2
    with pytest.raises(einattn.UnsupportedError, match=r"rule 'L2'.*lower BLOCK_M or BLOCK_N"):
        big.validate(AVX512, wide, kp, CACHES)
    space = CpuConfig.space(kp, wide, AVX512, CACHES)
    assert big not in space and space
    assert big in CpuConfig.space(kp, wide, AVX512, dataclasses.replace(CACHES, l2=64 << 20))
    # over L1 is a note, not an error
    assert any("L1" in note for note in CpuConfig().validate(AVX512, wide, kp, CACHES))


@pytest.mark.parametrize("config, host, pattern", [
    ({"SCORE_RJ": 16, "SCORE_RI": 64}, AVX512, r"rule 'registers'.*score register tile needs 64.*lower SCORE_RJ"),
    ({"PV_RM": 16, "PV_E": 64}, AVX512, r"rule 'registers'.*P\.V register tile needs 64.*lower PV_RM"),
    ({}, AVX2, r"rule 'registers'.*needs 32 vector accumulators, over the 12"),
    ({"SCORE_RI": 24, "BLOCK_M": 48}, AVX512, r"SCORE_RI=24 must be a multiple of the vector width 16"),
    ({"BLOCK_N": 66}, AVX512, r"BLOCK_N=66 must be a multiple of SCORE_RJ=4"),
    ({"KV_SPLITS": 100}, AVX512, r"KV_SPLITS=100 must be in 1\.\.64"),
])
def test_validate_names_the_rule(config, host, pattern):
    with pytest.raises(einattn.UnsupportedError, match=pattern):
        CpuConfig(**config).validate(host)


def test_validate_refuses_a_split_of_a_multi_pass_plan():
    with pytest.raises(einattn.UnsupportedError, match=r"KV_SPLITS=2: .*passes over the keys.*use KV_SPLITS=1"):
        CpuConfig(KV_SPLITS=2).validate(AVX512, SMALL, kplan("centered_relu"), CACHES)


def test_read_cache_sizes(tmp_path):
    for k, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                              (2, "Unified", "2048K"), (3, "Unified", "36M")]):
        d = tmp_path / f"index{k}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    got = read_cache_sizes(tmp_path)
    assert (got.l1d, got.l2, got.l3) == (32 << 10, 2 << 20, 36 << 20) and got.cores >= 1
    fallback = read_cache_sizes(tmp_path / "missing")
    assert (fallback.l1d, fallback.l2) == (48 << 10, 1 << 20)


@pytest.mark.cpu
def test_backend_space_default_and_fingerprint():
    """Through the backend object, as the autotuner calls it (the host is detected with TVM)."""
    pytest.importorskip("tvm")
    from einattn.backends import get_backend
    from einattn.backends.base import parse_target
    target = parse_target("cpu")
    backend = get_backend(target)
    plan = make_plan(load_spec("softmax"))
    space = backend.space(plan, target, DECODE)
    default = backend.default_config(plan, target, DECODE)
    assert set(default) == set(CpuConfig.keys()) and default["KV_SPLITS"] == 1
    assert space[0] == default and all(set(c) == set(default) for c in space)
    fp = backend.fingerprint(target)
    for key in ("host", "vector_bits", "cores", "tvm", "template", "l1d", "l2"):
        assert key in fp, key
