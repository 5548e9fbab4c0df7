"""The Triton backend: the zoo in Triton's interpreter, ahead-of-time builds, limits, errors.

Numerics run the same rendered kernel the GPU would run, on CPU tensors under
TRITON_INTERPRET (small shapes, odd sizes, M != N both ways, GQA, padded head
dims, fully masked rows). fp32 must match the float64 reference to 1e-4 of the
output's magnitude; fp16 within 5x of the error of an eager fp16 evaluation of
the same cascade (FlexAttention's criterion; measured ratios are 0.3-1.0).

Ahead-of-time builds cover the whole zoo for cuda:sm_90 and rocm:gfx942 and a
representative subset (plain, masked, multi-output, two scores, two passes,
GQA) for cuda:sm_80 and rocm:gfx90a: one build takes 1-4 s on two cores, and
the full 18 x 4 matrix would take 3-4 minutes.
"""
from __future__ import annotations

import math

import pytest
import torch

import einattn
from einattn.backends import get_backend, parse_target
from einattn.backends.torch.check import TOLERANCE
from einattn.backends.torch.reference import run_reference
from einattn.compiler import make_plan
from einattn.ir import bind_sizes, eval_params
from tests.helpers import ZOO_NAMES, as_tuple, zoo_inputs

pytest.importorskip("triton")

from einattn.backends.triton.hardware import load_target  # noqa: E402

SMALL = {"b": 1, "h": 2}
SHAPES = [  # (m, n, BLOCK_M, BLOCK_N): M < N and M > N, neither a multiple of a block
    (37, 53, 16, 32),
    (53, 37, 32, 16),
]
AOT_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
AOT_SIZES = {"b": 1, "h": 4, "g": 2, "m": 128, "n": 128, "d": 64, "e": 64}
AOT_FULL = ("cuda:sm_90", "rocm:gfx942")
AOT_SUBSET = ("softmax", "causal", "lse", "differential", "centered_relu", "gqa")
AOT_CASES = [(n, t) for t in AOT_FULL for n in ZOO_NAMES] + \
            [(n, t) for t in ("cuda:sm_80", "rocm:gfx90a") for n in AOT_SUBSET]
HAS_GPU = torch.cuda.is_available()


def _sizes(name: str, m: int, n: int, **extra) -> dict:
    out = {**SMALL, "m": m, "n": n, **extra}
    if name == "gqa":
        out.update(h=4, g=2)
    return out


def _interp(name: str, bm: int, bn: int, **params):
    return einattn.compile(name, target="cuda", interpret=True, config={"BLOCK_M": bm, "BLOCK_N": bn}, **params)


def _rel(got, want) -> float:
    return max(((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30)).item()
               for g, w in zip(as_tuple(got), as_tuple(want)))


# ---------------------------------------------------------------------------
# numerics in the interpreter

@pytest.mark.cpu
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_fp32_matches_reference(name):
    ref = einattn.compile(name, target="reference")
    for m, n, bm, bn in SHAPES:
        x = zoo_inputs(name, dtype=torch.float32, **_sizes(name, m, n, d=24, e=40))
        got = _interp(name, bm, bn)(**x)
        for g in as_tuple(got):
            assert not torch.isnan(g).any()
        assert _rel(got, ref(**x)) <= 1e-4, (name, m, n)


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["causal", "differential", "lse", "sinks", "prefix_lm"])
@pytest.mark.parametrize("scale", [-0.7, 0.0, 2.5, math.inf])
def test_score_scale_fold_off_for_a_scale_not_positive(name, scale):
    """A folded score scale (render.ScoreFold) is a specialisation for 0 < scale < inf; any other
    scale runs the kernel with the scale kept in the score (FOLD_<S> false), and both agree with
    the reference, with key lengths that fill the last tile (EVEN_N) and that do not."""
    ref = einattn.compile(name, target="reference", scale=scale)
    k = _interp(name, 16, 16, scale=scale)
    assert "FOLD_S" in k._artifact.source
    for n in (37, 48):
        x = zoo_inputs(name, dtype=torch.float32, **_sizes(name, n, n))
        got, want = as_tuple(k(**x)), as_tuple(ref(**{a: v.double() for a, v in x.items()}))
        for g, w in zip(got, want):
            assert torch.equal(torch.isnan(g), torch.isnan(w)), (name, scale, n)
            fin = torch.isfinite(w)
            assert fin.any() or scale == math.inf
            if fin.any():
                assert _rel(g[fin], w[fin]) <= 1e-4, (name, scale, n)


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["causal", "gqa", "sinks", "differential"])
def test_tensor_descriptor_and_pointer_loads_agree(name):
    """K and V load through tensor descriptors (TMA) where the layout allows it (Hopper targets;
    the feature dim innermost; 16-byte strides and base), by pointers otherwise; the interpreter
    runs both: contiguous inputs take descriptors, a key stride of 20 fp32 (80 bytes: aligned) too,
    one of 17 (68 bytes) the pointers; sm_80 never takes them."""
    from einattn.backends.triton.abi import tma_usable
    x = zoo_inputs(name, dtype=torch.float32, **_sizes(name, 37, 45, d=16, e=16))
    want = einattn.compile(name, target="reference")(**{k: v.double() for k, v in x.items()})
    k = _interp(name, 16, 16)
    r = k._artifact.rendered
    assert "TMA" in r.constexprs and r.tma

    def padded(t, extra):       # the same values, the last dim inside a wider row
        w = torch.zeros(*t.shape[:-1], t.shape[-1] + extra)
        w[..., :t.shape[-1]] = t
        return w[..., :t.shape[-1]]
    keyed = [n for n, _, _ in r.tma]
    for extra, tma in ((0, True), (4, True), (1, False)):
        y = {n: (padded(v, extra) if n in keyed else v) for n, v in x.items()}
        assert tma_usable(r, 90, {}, {}, tensors=y) is tma
        assert _rel(k(**y), want) <= 1e-4, (name, extra)
    assert tma_usable(r, 80, {}, {}, tensors=x) is False


@pytest.mark.cpu
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_fp16_within_eager_error(name):
    x = zoo_inputs(name, dtype=torch.float16, **_sizes(name, 37, 53))
    spec = einattn.load_spec(name)
    want = as_tuple(einattn.compile(name, target="reference")(**x))      # float64 of the fp16 inputs
    sz = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    eager = run_reference(spec, x, sz, eval_params(spec, sz, {}), torch.float16)
    eager_err = _rel(tuple(eager[o] for o in spec.outputs), want)
    got = as_tuple(_interp(name, 32, 32)(**x))
    assert got[0].dtype == torch.float16
    assert _rel(got, want) <= max(5 * eager_err, 1e-3), (name, eager_err)


@pytest.mark.cpu
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_bf16_within_tolerance(name):
    """bf16 in the interpreter (run on fp32 copies, outputs rounded to bf16): the documented bf16
    tolerance (docs/dtypes.md) of the float64 reference on the same inputs."""
    x = zoo_inputs(name, dtype=torch.bfloat16, **_sizes(name, 37, 53))
    want = as_tuple(einattn.compile(name, target="reference")(**x))
    got = as_tuple(_interp(name, 32, 32)(**x))
    assert got[0].dtype == torch.bfloat16
    assert _rel(got, want) <= TOLERANCE[torch.bfloat16], name


@pytest.mark.parametrize("target", ["cuda:sm_90", "cuda:sm_80", "rocm:gfx942"])
def test_bf16_compiles_ahead_of_time(target):
    """The bf16 kernels (bf16 tl.dot operands, fp32 accumulators) compile for the GPU targets."""
    t = parse_target(target)
    art = _prepare("causal", target, AOT_CONFIG)
    ck = get_backend(t).build(art, AOT_SIZES, torch.bfloat16)
    text = ck.files.get("ptx") or ck.files["amdgcn"]
    assert ("bf16" in text) if t.kind == "cuda" else ("mfma" in text and "bf16" in text), target
    r = ck.resources
    assert r.get("spill_stores", r.get("spill_vgprs")) == 0, (target, r)


@pytest.mark.cpu
def test_fully_masked_rows_are_exactly_zero():
    # bottom-right causal with M > N: the first M - N query rows see no key
    x = zoo_inputs("causal_bottom_right", dtype=torch.float32, **_sizes("causal_bottom_right", 45, 20))
    out = _interp("causal_bottom_right", 16, 16)(**x)
    assert torch.equal(out[:, :, :25], torch.zeros_like(out[:, :, :25]))
    assert out[:, :, 25:].abs().sum() > 0
    # a window of width 0 masks every key of every row: all tiles are skipped
    x = zoo_inputs("sliding_window", dtype=torch.float32, **_sizes("sliding_window", 21, 33))
    out = _interp("sliding_window", 16, 16, W=0)(**x)
    assert torch.equal(out, torch.zeros_like(out))
    # relu divides by a zero count on empty rows: 0 / 0 = 0
    x = zoo_inputs("relu", dtype=torch.float32, **_sizes("relu", 21, 33))
    assert not torch.isnan(_interp("relu", 16, 16)(**x)).any()


@pytest.mark.cpu
def test_non_contiguous_inputs_and_gqa_without_copies():
    x = zoo_inputs("gqa", dtype=torch.float32, **_sizes("gqa", 29, 41))
    ref = einattn.compile("gqa", target="reference")(**x)
    y = {"Q": x["Q"].transpose(1, 2).contiguous().transpose(1, 2),          # heads outermost in memory
         "K": x["K"].transpose(-1, -2).contiguous().transpose(-1, -2),      # d not contiguous
         "V": torch.cat([x["V"], x["V"]], dim=-1)[..., : x["V"].shape[-1]]}  # a strided slice
    assert not y["K"].is_contiguous() and not y["V"].is_contiguous()
    assert _rel(_interp("gqa", 16, 16)(**y), ref) <= 1e-4


@pytest.mark.cpu
def test_env_interpret_setting(monkeypatch):
    monkeypatch.setenv("EINATTN_INTERPRET", "1")
    k = einattn.compile("softmax", target="cuda:sm_80", config={"BLOCK_M": 16, "BLOCK_N": 16})
    x = zoo_inputs("softmax", dtype=torch.float32, **_sizes("softmax", 9, 17))
    assert _rel(k(**x), einattn.compile("softmax", target="reference")(**x)) <= 1e-4


def test_rendered_source_has_one_hook_and_documents_constants():
    art = _prepare("causal", "cuda:sm_90", AOT_CONFIG)
    src = art.source
    for name in ("BLOCK_M", "BLOCK_N", "BLOCK_d", "BLOCK_e", "SIZE_d", "SIZE_e", "DOT_PRECISION"):
        assert f"#   {name}" in src, name
    assert "tl.dot" in src and "offs_n[None, :] <= offs_m[:, None]" in src
    # FAST tiles carry neither the predicate nor the key bound
    fast = src.split("for start_n in range(flo, fhi, BLOCK_N):")[1].split("for start_n")[0]
    assert "<=" not in fast and "mask_n" not in fast
    gqa = _prepare("gqa", "cuda:sm_90", AOT_CONFIG).source
    assert "(idx_h // p_r) * stride_K_1" in gqa


# ---------------------------------------------------------------------------
# ahead of time

def _prepare(name, target, config):
    t = parse_target(target)
    return get_backend(t).prepare(make_plan(einattn.load_spec(name)), t, config)


@pytest.fixture(scope="session")
def built():
    """One build per (variant, target) for the whole session."""
    cache = {}

    def get(name, target):
        if (name, target) not in cache:
            t = parse_target(target)
            art = _prepare(name, target, AOT_CONFIG)
            cache[name, target] = (art, get_backend(t).build(art, AOT_SIZES, torch.float16))
        return cache[name, target]
    return get


@pytest.mark.parametrize("name,target", AOT_CASES, ids=[f"{t}-{n}" for n, t in AOT_CASES])
def test_aot_build(built, name, target):
    art, ck = built(name, target)
    hw = load_target(parse_target(target))
    r = ck.resources
    assert 0 < r["shared_memory"] <= hw.shared_memory_per_block
    assert 0 < r["registers"] <= hw.max_registers_per_thread
    if hw.kind == "cuda":
        want = ".target sm_90a" if hw.arch == "sm_90" else ".target sm_80"
        assert want in ck.files["ptx"]
        assert ck.files["cubin"][:4] == b"\x7fELF"
        assert r["spill_stores"] >= 0 and r["spill_loads"] >= 0     # reported (differential spills on sm_80)
    else:
        assert ck.files["hsaco"][:4] == b"\x7fELF"
        assert "mfma" in ck.files["amdgcn"] and r["spill_vgprs"] >= 0
        assert 0 < r["sgprs"] and ck.files["amdgcn"].count(f".amdhsa_kernel {ck.name}") == 1


def test_softmax_compiles_without_spills(built):
    for target in ("cuda:sm_90", "cuda:sm_80", "rocm:gfx942", "rocm:gfx90a"):
        r = built("softmax", target)[1].resources
        assert r.get("spill_stores", r.get("spill_vgprs")) == 0, (target, r)


def test_aot_build_is_cached_per_shape(built):
    art, ck = built("softmax", "cuda:sm_90")
    backend = get_backend(parse_target("cuda:sm_90"))
    assert backend.build(art, AOT_SIZES, torch.float16) is ck


# ---------------------------------------------------------------------------
# what cannot fit is rejected before compiling

@pytest.mark.parametrize("config,target,words", [
    ({"BLOCK_M": 48}, "cuda:sm_90", ["BLOCK_M=48", "power of two"]),
    ({"BLOCK_N": 8}, "cuda:sm_80", ["BLOCK_N=8", ">= 16"]),
    ({"num_warps": 32}, "rocm:gfx942", ["2048 threads", "limit of 1024"]),
    ({"BLOCK_N": 1024, "num_stages": 4}, "rocm:gfx90a", ["shared memory", "limit is 65536"]),
    ({"BLOCK_M": 256, "BLOCK_N": 256, "num_warps": 1}, "cuda:sm_90", ["registers per thread", "limit is 255"]),
    ({"BLOCK_X": 64}, "cuda:sm_90", ["BLOCK_X", "BLOCK_M, BLOCK_N, num_warps, num_stages"]),
])
def test_config_rejected_before_compiling(config, target, words):
    with pytest.raises(einattn.UnsupportedError) as e:
        _prepare("softmax", target, config)
    for w in words:
        assert w in str(e.value)


def test_head_dim_and_dtype_rejected():
    t = parse_target("cuda:sm_90")
    art = _prepare("softmax", "cuda:sm_90", AOT_CONFIG)
    with pytest.raises(einattn.UnsupportedError, match="head dim d=512.*at most 256"):
        get_backend(t).build(art, {**AOT_SIZES, "d": 512}, torch.float16)
    with pytest.raises(einattn.UnsupportedError, match="dtype float64 is not supported.*float16"):
        get_backend(t).build(art, AOT_SIZES, torch.float64)
    with pytest.raises(einattn.UnsupportedError, match="no hardware data for target 'rocm:gfx1100'"):
        _prepare("softmax", "rocm:gfx1100", {})


def test_dtype_missing_on_target_is_rejected():
    from dataclasses import replace

    from einattn.backends.triton.config import TritonConfig, check_config
    from einattn.compiler.kernel_plan import make_kernel_plan
    no_bf16 = replace(load_target(parse_target("cuda:sm_80")), dtypes=("float32", "float16"))
    kp = make_kernel_plan(make_plan(einattn.load_spec("softmax")))
    with pytest.raises(einattn.UnsupportedError, match="bfloat16 is not supported.*float32, float16"):
        check_config(kp, TritonConfig(), no_bf16, sizes=None, dtype=torch.bfloat16)


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible")
def test_gpu_kernel_without_gpu_says_how_to_interpret():
    k = einattn.compile("softmax", target="cuda:sm_90")
    x = zoo_inputs("softmax", dtype=torch.float16, **_sizes("softmax", 8, 8))
    with pytest.raises(einattn.BackendUnavailable) as e:
        k(**x)
    msg = str(e.value)
    assert "interpret=True" in msg and "EINATTN_INTERPRET=1" in msg and "no GPU" in msg


def test_targets_data_has_sources():
    from einattn.backends.triton.hardware import all_targets
    names = {t.name for t in all_targets()}
    assert {"A100", "H100", "MI250X", "MI300X"} <= names
    for t in all_targets():
        assert t.peak_flops_fp16 > 1e13 and t.memory_bandwidth > 1e12
        assert {"sms", "shared_memory_per_block", "peak_flops_fp16", "memory_bandwidth"} <= set(t.sources)
        assert t.warp_size == (32 if t.kind == "cuda" else 64)


# ---------------------------------------------------------------------------
# on a real GPU

@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA/ROCm device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_on_gpu(name, dtype):
    kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
    ref = einattn.compile(name, target="reference")
    sz = {"b": 2, "h": 4, "m": 77, "n": 131, "d": 64, "e": 64} if name != "gqa" else \
        {"b": 2, "h": 4, "g": 2, "m": 77, "n": 131, "d": 64, "e": 64}
    x = zoo_inputs(name, dtype=dtype, **sz)
    got = einattn.compile(name, target=kind, config={"BLOCK_M": 64, "BLOCK_N": 64})(
        **{k: v.cuda() for k, v in x.items()})
    err = _rel(tuple(g.cpu() for g in as_tuple(got)), ref(**x))
    assert err <= (1e-4 if dtype == torch.float32 else 1e-2), err
    assert math.isfinite(err)


def test_tma_allocator_set_once_and_the_callers_kept():
    """Descriptor kernels need Triton's allocator (no GPU here: the choice is checked, not run)."""
    import contextvars

    import triton
    from triton.runtime import _allocation

    from einattn.backends.triton.backend import _tma_allocator, _torch_scratch

    def fresh():
        _tma_allocator()
        return _allocation._allocator.get()

    def users():
        mine = lambda size, alignment, stream: None     # noqa: E731
        triton.set_allocator(mine)
        _tma_allocator()
        return _allocation._allocator.get() is mine
    assert contextvars.Context().run(fresh) is _torch_scratch
    assert contextvars.Context().run(users)
