"""The CPU backend (TVM): every zoo variant against the float64 reference, the cache, the errors.

Kernels are compiled once per (variant, config) for the whole module: the test
shapes share one shape bucket (d = e = 16), and batch, heads and sequence
lengths are runtime values, so each variant builds once (~0.3 s).
"""
from __future__ import annotations

import functools
import re

import pytest
import torch

import einattn
from einattn.backends.torch.check import TOLERANCE
from tests.helpers import ZOO_NAMES, assert_rel_close, zoo_inputs

pytest.importorskip("tvm")
pytestmark = pytest.mark.cpu

REL = 1e-4                      # VARIANTS.md: fp32 kernels within 1e-4 of max |reference|


@functools.lru_cache(maxsize=None)
def cpu_kernel(name: str, config: tuple = ()):
    return einattn.compile(name, target="cpu", config=dict(config))


@functools.lru_cache(maxsize=None)
def ref_kernel(name: str):
    return einattn.compile(name, target="reference")


def check(name: str, dtype=torch.float32, **sizes):
    x = zoo_inputs(name, dtype=dtype, **sizes)
    got = cpu_kernel(name)(**x)
    want = ref_kernel(name)(**{k: v.double() for k, v in x.items()})
    outs = got if isinstance(got, tuple) else (got,)
    # outputs with the value index take the inputs' dtype, per-row outputs (lse) stay float32
    assert outs[0].dtype == dtype and {o.dtype for o in outs} <= {dtype, torch.float32}
    assert_rel_close(got, want, TOLERANCE[dtype] if dtype != torch.float32 else REL, f"{name} {dtype} {sizes}")
    return got


# -- the zoo ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_m_lt_n(name):
    """b=2, h=4 (g=2 for gqa), m=77 < n=131: neither a multiple of the 64-blocks."""
    check(name)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_m_gt_n(name):
    check(name, m=131, n=77)


@pytest.mark.parametrize("name", ["softmax", "causal", "alibi", "differential", "centered_relu"])
def test_full_tiles_only(name):
    """Sizes that divide the blocks: every tile takes the fast (predicate-free) path or is skipped."""
    check(name, b=1, h=2, m=128, n=192)


def test_fully_masked_rows_are_exactly_zero():
    """Bottom-right causal with m > n: query rows m < m - n see no key and output exactly 0."""
    out = check("causal_bottom_right", m=131, n=77)
    assert torch.equal(out[:, :, :131 - 77], torch.zeros_like(out[:, :, :131 - 77]))
    assert out[:, :, 131 - 77:].abs().amax(dim=-1).min() > 0


def test_tiny_and_single_key():
    check("causal", b=1, h=1, m=1, n=1)
    check("sliding_window", b=1, h=1, m=3, n=200)


@pytest.mark.parametrize("m, n", [(5, 0), (0, 5)])
def test_no_keys_or_no_queries(m, n):
    """No keys: every row is fully masked and outputs 0 (lse -inf); no queries: empty outputs."""
    x = zoo_inputs("lse", dtype=torch.float32, b=1, h=2, m=m, n=n)
    got = cpu_kernel("lse")(**x)
    want = ref_kernel("lse")(**{k: v.double() for k, v in x.items()})
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=0)


def test_value_dim_split_into_register_tiles():
    """e = 80 runs as a 64-column and a 16-column P.V register tile; d = 40 is not a power of two."""
    x = zoo_inputs("lse", dtype=torch.float32, d=40, e=80, m=70, n=90)
    got = cpu_kernel("lse")(**x)
    want = ref_kernel("lse")(**{k: v.double() for k, v in x.items()})
    assert_rel_close(got, want, REL, "lse d=40 e=80")


def test_configs():
    x = zoo_inputs("causal", dtype=torch.float32, m=100, n=150)
    want = ref_kernel("causal")(**{k: v.double() for k, v in x.items()})
    for cfg in ({"BLOCK_M": 32, "SCORE_RI": 32, "SCORE_RJ": 8, "PV_RM": 2},
                {"BLOCK_N": 16, "PV_E": 16}, {"BLOCK_M": 128, "BLOCK_N": 32}):
        got = cpu_kernel("causal", tuple(sorted(cfg.items())))(**x)
        assert_rel_close(got, want, REL, f"causal {cfg}")


# -- inputs: strides, dtypes ----------------------------------------------------------

def test_strided_inputs_without_copies():
    """[b, m, h, d] tensors viewed as [b, h, m, d] (the usual projection layout) and an
    expanded per-head tensor run as they are."""
    x = zoo_inputs("alibi", dtype=torch.float32)
    want = cpu_kernel("alibi")(**x)
    strided = {k: v.transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 4 else v for k, v in x.items()}
    assert not strided["Q"].is_contiguous()
    torch.testing.assert_close(cpu_kernel("alibi")(**strided), want, rtol=0, atol=0)
    slope = x["slope"][:1].expand(x["slope"].shape[0])          # stride 0
    got = cpu_kernel("alibi")(**{**x, "slope": slope})
    ref = ref_kernel("alibi")(**{k: v.double() for k, v in {**x, "slope": slope.contiguous()}.items()})
    assert_rel_close(got, ref, REL, "alibi with an expanded slope")


def test_strided_last_dim_is_rejected_with_the_fix():
    x = zoo_inputs("softmax", dtype=torch.float32)
    q = torch.randn(*x["Q"].shape[:-1], 2 * x["Q"].shape[-1])[..., ::2]
    with pytest.raises(einattn.UnsupportedError, match=r"Q\.contiguous\(\)"):
        cpu_kernel("softmax")(q, x["K"], x["V"])


@pytest.mark.parametrize("name", ZOO_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_zoo_low_precision(name, dtype):
    """bf16 and fp16 inputs give outputs of their dtype (lse in float32) within the documented
    tolerance (docs/dtypes.md) of the float64 reference on the same rounded inputs."""
    check(name, dtype, m=77, n=131)


@pytest.mark.parametrize("dtype, phrase", [(torch.float64, "float32"), (torch.float8_e4m3fn, "float32")])
def test_other_dtypes_rejected(dtype, phrase):
    x = zoo_inputs("softmax", dtype=dtype)
    with pytest.raises(einattn.UnsupportedError, match=phrase):
        cpu_kernel("softmax")(**x)


def test_config_errors():
    with pytest.raises(einattn.UnsupportedError, match="BLOCK_K.*accepts: BLOCK_M"):
        einattn.compile("softmax", target="cpu", config={"BLOCK_K": 64})
    # one and a half vectors: not a multiple of this host's lanes (16 with AVX-512, 8 with AVX2)
    from einattn.backends.cpu.runtime import host
    ri = host().fp32_lanes * 3 // 2
    with pytest.raises(einattn.UnsupportedError, match=f"SCORE_RI={ri} must be a multiple"):
        einattn.compile("softmax", target="cpu", config={"SCORE_RI": ri, "BLOCK_M": 2 * ri})


# -- the build cache --------------------------------------------------------------------

def _fresh(monkeypatch, tmp_path):
    from einattn.backends.cpu import build as cpu
    monkeypatch.setenv("EINATTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "_MEMORY", {})
    return cpu


def test_disk_cache_hit(monkeypatch, tmp_path):
    cpu = _fresh(monkeypatch, tmp_path)
    x = zoo_inputs("softplus", dtype=torch.float32, b=1, h=1)
    want = einattn.compile("softplus", target="cpu")(**x)
    files = list((tmp_path / "cpu").glob("*.so"))
    assert len(files) == 1 and not list((tmp_path / "cpu").glob(".*tmp*"))
    # a second compile with an empty memory cache loads the file instead of building
    monkeypatch.setattr(cpu, "_MEMORY", {})
    monkeypatch.setattr(cpu, "_build", lambda *a: pytest.fail("built although the disk cache has the kernel"))
    torch.testing.assert_close(einattn.compile("softplus", target="cpu")(**x), want, rtol=0, atol=0)


def test_corrupt_cache_file_warns_and_rebuilds(monkeypatch, tmp_path):
    cpu = _fresh(monkeypatch, tmp_path)
    k = einattn.compile("sigmoid", target="cpu")
    x = zoo_inputs("sigmoid", dtype=torch.float32, b=1, h=1)
    art = k._artifact.concrete({"b": 1, "h": 1, "m": 77, "n": 131}, {})     # what the call runs
    key, _ = cpu.cache_key(art, {"d": 16, "e": 16})
    path = tmp_path / "cpu" / f"{key}.so"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    with pytest.warns(RuntimeWarning, match="unreadable cpu kernel cache file"):
        got = k(**x)
    assert_rel_close(got, ref_kernel("sigmoid")(**{n: v.double() for n, v in x.items()}), REL, "sigmoid")
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_cache_key_separates_shapes_and_configs(monkeypatch, tmp_path):
    cpu = _fresh(monkeypatch, tmp_path)
    art = einattn.compile("softmax", target="cpu")._artifact
    art2 = einattn.compile("softmax", target="cpu", config={"BLOCK_N": 32})._artifact
    k1, _ = cpu.cache_key(art, {"d": 16, "e": 16})
    assert k1 != cpu.cache_key(art, {"d": 16, "e": 32})[0]
    assert k1 != cpu.cache_key(art2, {"d": 16, "e": 16})[0]
    assert k1 == cpu.cache_key(einattn.compile("softmax", target="cpu")._artifact, {"d": 16, "e": 16})[0]


# -- the generated code ---------------------------------------------------------------------

def test_softmax_assembly_uses_the_vector_units():
    """AVX-512 FMAs on zmm registers, and no scalar libm exp (the polynomial exp2 instead)."""
    from einattn.backends.cpu import build as cpu
    if cpu.host().vector_bits < 512:
        pytest.skip("the host has no AVX-512")
    art = cpu_kernel("softmax")._artifact
    ex = cpu.build_module(cpu.build_source(art, {"d": 64, "e": 64}))
    asm = ex.mod.inspect_source("asm")
    assert re.search(r"vfmadd\d+ps\s+[^\n]*zmm", asm)
    assert not re.search(r"call\w*\s+(expf|exp|__expf_finite)\b", asm)
