"""The loops of the compiled GPU kernels (``backends/triton/sass.py``): found in SASS and AMDGCN,
counted, and held to recorded budgets, a static regression check of the kernels' size that
needs no GPU.

Budgets: the causal fp16 kernel at b=1 h=8 m=n=4096 as compiled on 2026-12-02 (CUDA: the
tiles of Triton's fused-attention tutorial, BLOCK_M=128 BLOCK_N=64, 8 warps, 3 stages; ROCm:
the default config), plus 2%. Triton's own tutorial compiles to 310 / 416 (d=64) and 359 / 464
(d=128) instructions in the same two loops (benchmarks/RESULTS.md): lower the budgets as the
kernels approach it, never raise them silently.
"""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.backends import get_backend, parse_target
from einattn.backends.triton.sass import amdgcn_loops, kernel_loops, sass_loops
from einattn.compiler import make_plan

pytest.importorskip("triton")

TUTORIAL_TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
# (target, d) -> (full-tile loop, diagonal loop) instructions per iteration, mma per loop
# (538 / 748, 606 / 851, 700 / 975 and 792 / 1084 before the online form's exp became exp2)
BUDGETS = {("cuda:sm_90", 64): ((436, 648), 8), ("cuda:sm_90", 128): ((504, 740), 12),
           ("rocm:gfx942", 64): ((535, 761), 24), ("rocm:gfx942", 128): ((636, 897), 48)}


def compiled(name: str, target: str, d: int):
    t = parse_target(target)
    backend = get_backend(t)
    sizes = {"b": 1, "h": 8, "m": 4096, "n": 4096, "d": d, "e": d}
    art = backend.prepare(make_plan(einattn.load_spec(name)), t,
                          TUTORIAL_TILES if t.kind == "cuda" else {}).at(sizes, {})
    return backend.build(art, sizes, torch.float16)


@pytest.mark.parametrize("target, d", sorted(BUDGETS), ids=[f"{t}-d{d}" for t, d in sorted(BUDGETS)])
def test_causal_loops_within_budget(target, d):
    loops = kernel_loops(compiled("causal", target, d))
    (full, diagonal), mma = BUDGETS[target, d]
    assert len(loops) == 2, loops                 # the full key tiles, then the diagonal ones
    for lp, budget in zip(loops, (full, diagonal)):
        assert lp["instructions"] <= budget * 1.02, (target, d, lp, budget)
        assert lp["mma"] == mma, lp               # the same matrix work in both loops
        assert lp["ex2"] >= 16, lp                # the thread's share of the tile's exponentials
    assert loops[1]["instructions"] > loops[0]["instructions"]     # the diagonal loop masks


def test_online_softmax_exp_is_exp2_with_log2e_folded():
    """The online form exp(y - max y) and its rescale print as exp2 (flush-to-zero is harmless:
    the row's largest term is 1); an exp that is not of that form keeps tl.exp (sinks: the max
    also covers the sink logit, so no tile term need be 1)."""
    def source(name):
        t = parse_target("cuda:sm_90")
        return get_backend(t).prepare(make_plan(einattn.load_spec(name)), t, {}).source
    causal = source("causal")
    assert "t_P = tl.exp2((" in causal and "* 1.4426950408889634)" in causal
    assert "alpha_M = tl.exp2(_sub_rule(prev_M, r_M) * 1.4426950408889634)" in causal
    assert "t_P = tl.exp(_sub_rule(t_S, r_M[:, None]))" in source("sinks")


def test_parsers_on_small_texts():
    text = ("        /*0000*/  MOV R1, c[0x0][0x28] ;\n"
            "        /*0010*/  MUFU.EX2 R2, R2 ;\n"
            "        /*0020*/  NOP ;\n"
            "        /*0030*/  HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ;\n"
            "        /*0040*/  @!P0 BRA 0x10 ;\n"
            "        /*0050*/  @P1 BRA 0x10 ;\n"
            "        /*0060*/  EXIT ;\n")
    [lp] = sass_loops(text)
    assert (lp.start, lp.end, lp.instructions, lp.counts["ex2"], lp.counts["mma"]) == (0x10, 0x50, 4, 1, 1)
    amd = ".LBB0_1:\n\tv_exp_f32_e32 v1, v1\n\ts_nop 0\n\tv_mfma_f32_32x32x8f16 a[0:15], v[0:1], v[2:3], a[0:15]\n" \
          "\ts_cbranch_scc1 .LBB0_1\n\ts_endpgm\n"
    [lp] = amdgcn_loops(amd)
    assert (lp.instructions, lp.counts["ex2"], lp.counts["mma"]) == (3, 1, 1)
    assert sass_loops("        /*0000*/  BRA 0x40 ;\n        /*0040*/  EXIT ;\n") == []     # forward only
