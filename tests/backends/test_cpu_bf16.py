"""bf16 on the CPU kernel: the vdpbf16ps products (``backends/cpu/pairs.py``), the widening
fallback (``DOT="fp32"``, and every host without AVX512_BF16), their tails and the IEEE values.

The zoo in bf16 and fp16 is in ``test_cpu.py``; random cascades in ``test_random_bf16.py``.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

import einattn
from einattn.backends.cpu import build as cpu
from einattn.backends.cpu.runtime import host
from einattn.backends.torch.check import TOLERANCE
from tests.helpers import as_tuple, assert_rel_close, ieee_mismatch, zoo_inputs

pytest.importorskip("tvm")
pytestmark = pytest.mark.cpu

BF16 = TOLERANCE[torch.bfloat16]
AVX512_BF16 = host().has_bf16 and host().fp32_lanes == 16
DTYPES = {n: "bfloat16" for n in ("Q", "K", "V", "O")}


def source(name: str, config: dict | None = None, d: int = 64, e: int = 64) -> str:
    art = einattn.compile(name, target="cpu", config=config or {})._artifact
    sizes = {"b": 1, "h": 2, "m": 256, "n": 256, "d": d, "e": e}
    return cpu.build_source(art.concrete(sizes, {}), {"d": d, "e": e}, DTYPES)


def calls(src: str) -> int:
    """The contractions on vdpbf16ps (each is rendered in the full-tile and in the general body)."""
    return src.count("einattn_dpbf16\"") // 2


def check(name: str, config: dict | None = None, **sizes):
    x = zoo_inputs(name, dtype=torch.bfloat16, **sizes)
    got = einattn.compile(name, target="cpu", config=config or {})(**x)
    want = einattn.compile(name, target="reference")(**{k: v.double() for k, v in x.items()})
    assert as_tuple(got)[0].dtype == torch.bfloat16
    assert_rel_close(got, want, BF16, f"{name} {config} {sizes}")


@pytest.mark.skipif(not AVX512_BF16, reason="the host has no AVX512_BF16 (vdpbf16ps)")
def test_bf16_assembly_uses_vdpbf16ps():
    """Both contractions of the softmax kernel run on vdpbf16ps; DOT=fp32 and fp32 inputs do not."""
    src = source("softmax")
    assert calls(src) == 2 and 'pragma_import_llvm' in src
    asm = cpu.build_module(src).mod.inspect_source("asm")
    n = len(re.findall(r"vdpbf16ps\s+[^\n]*zmm", asm))
    assert n >= 64, n              # unrolled: d/2 pairs x register tiles of the score, P.V too
    assert not re.search(r"call\w*\s+\S*einattn_dpbf16", asm)      # inlined, never called
    widened = cpu.build_module(source("softmax", {"DOT": "fp32"})).mod.inspect_source("asm")
    assert "vdpbf16ps" not in widened


def test_renders_pairs_only_where_they_apply():
    """On a host with vdpbf16ps: an odd contraction size keeps the score widened, a value width
    that is not a multiple of 16 lanes keeps P.V widened; the decode program always widens."""
    if not AVX512_BF16:
        assert calls(source("softmax")) == 0       # the fallback is chosen by host detection
        return
    assert calls(source("softmax", d=15)) == 1     # P.V only
    assert calls(source("softmax", e=24)) == 1     # the score only
    assert calls(source("softmax", {"PROGRAM": "decode", "PACK": 1, "BLOCK_M": 1})) == 0


@pytest.mark.parametrize("name", ["softmax", "causal", "gqa", "alibi", "softcap", "sigmoid", "lse"])
@pytest.mark.parametrize("dot", ["auto", "fp32"])
def test_both_products_within_tolerance(name, dot):
    check(name, {"DOT": dot}, b=1, h=4, m=45, n=67, d=64, e=64)


@pytest.mark.parametrize("name", ["softmax", "gqa", "sinks"])
@pytest.mark.parametrize("config, m", [({"PROGRAM": "decode"}, 1), ({"PROGRAM": "decode"}, 5),
                                       ({"KV_SPLITS": 3}, 40), ({"KV_SPLITS": 2, "PROGRAM": "decode"}, 2)])
def test_decode_and_split_programs(name, config, m):
    """bf16 through the decode program (always widened) and split key loops (the workspace and
    the merge stay fp32)."""
    check(name, config, b=1, h=4, m=m, n=300, d=64, e=64)


@pytest.mark.parametrize("sizes", [dict(d=15, e=16), dict(d=16, e=24), dict(d=2, e=16), dict(n=1), dict(n=2),
                                   dict(n=3, m=1), dict(n=65), dict(n=129, m=130)])
def test_tails(sizes):
    """Odd contraction sizes, value widths off the vector, odd key counts (a pair with a zero
    key), one key, key counts one past a tile."""
    check("softmax", **({"b": 1, "h": 2, "m": 33, "n": 33} | sizes))
    check("causal", **({"b": 1, "h": 2, "m": 33, "n": 33} | sizes))


@pytest.mark.parametrize("name", ["softmax", "causal", "sigmoid", "lse"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-40])
def test_extreme_values(name, value):
    """One extreme element in each input: NaN and inf where the reference has them (P is rounded to
    bf16 with NaN kept and +-inf exact)."""
    x = zoo_inputs(name, dtype=torch.bfloat16, b=1, h=2, m=37, n=53, d=32, e=32)
    k = einattn.compile(name, target="cpu")
    ref = einattn.compile(name, target="reference")
    for inp in x:
        y = {n: t.clone() for n, t in x.items()}
        y[inp].view(-1)[7 * y[inp].numel() // 11] = value
        want = ref(**{n: t.double() for n, t in y.items()})
        for g, w in zip(as_tuple(k(**y)), as_tuple(want)):
            assert (msg := ieee_mismatch(g, w, BF16)) is None, f"{name} {inp}={value}: {msg}"


def test_signed_weights_keep_their_signs():
    """Regression (benchmarks/bf16.py, d=128, N=2048): the query operand with the softmax scale
    folded in was rounded to bf16 once more, which flipped the sign of scores near zero, and
    signed attention's sign(S) weights with them (rel error 6.1e-2). The scale now multiplies
    the score tile: the products of bf16 values are exact."""
    check("signed", b=1, h=4, m=512, n=2048, d=128, e=128)
