"""The Triton decode program: packed GQA rows, split key loop, per-call choice of program.

Numerics run in Triton's interpreter against the float64 reference, at m = 1 and 3
(``PROGRAM="auto"`` takes the decode program) and 16 (forced), with n = 77 keys (no
multiple of any tile) and 16-key tiles so the key loop has several tiles, a ragged
last one and, with the auto split count, parts. fp32 must match to 1e-4 of the
output's magnitude; fp16 within 5x the error of an eager fp16 evaluation (as in
test_triton.py). Every numeric case also checks that the decode program is what ran.
"""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.backends import get_backend, parse_target
from einattn.backends.torch.reference import run_reference
from einattn.compiler import make_plan
from einattn.ir import UnsupportedError, bind_sizes, eval_params
from tests.helpers import as_tuple, zoo_inputs

pytest.importorskip("triton")

from einattn.backends.triton.render import render  # noqa: E402
from einattn.compiler.kernel_plan import make_kernel_plan  # noqa: E402

VARIANTS = ["softmax", "causal_bottom_right", "gqa", "sinks", "softcap", "sigmoid", "alibi", "lse", "centered_relu"]
N = 77


def _sizes(name: str, m: int) -> dict:
    out = {"b": 1, "h": 2, "m": m, "n": N}
    if name == "gqa":
        out.update(h=8, g=2)            # r = 4 query heads per KV head
    return out


def _config(m: int, **extra) -> dict:
    return {"BLOCK_N": 16, **({"PROGRAM": "decode"} if m > 8 else {}), **extra}


def _rel(got, want) -> float:
    return max(((g.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30)).item()
               for g, w in zip(as_tuple(got), as_tuple(want)))


def _run(name: str, x: dict, config: dict):
    """Outputs of the interpreted kernel and the concrete configs of the programs it ran."""
    k = einattn.compile(name, target="cuda", interpret=True, config=config)
    out = k(**x)
    ran = [a.config for a in (k._artifact, *k._artifact.variants.values()) if a.program == "decode"]
    return out, ran


@pytest.mark.cpu
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("name", VARIANTS)
def test_zoo_fp32_matches_reference(name, m):
    x = zoo_inputs(name, dtype=torch.float32, **_sizes(name, m))
    got, ran = _run(name, x, _config(m))
    assert ran, "the decode program did not run"
    assert _rel(got, einattn.compile(name, target="reference")(**x)) <= 1e-4, (name, m, ran)


@pytest.mark.cpu
@pytest.mark.parametrize("name", VARIANTS)
def test_zoo_fp16_within_eager_error(name):
    x = zoo_inputs(name, dtype=torch.float16, **_sizes(name, 3))
    spec = einattn.load_spec(name)
    want = as_tuple(einattn.compile(name, target="reference")(**x))
    sz = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    eager = run_reference(spec, x, sz, eval_params(spec, sz, {}), torch.float16)
    eager_err = _rel(tuple(eager[o] for o in spec.outputs), want)
    got, ran = _run(name, x, _config(3))
    assert ran and as_tuple(got)[0].dtype == torch.float16
    assert _rel(got, want) <= max(5 * eager_err, 1e-3), (name, eager_err)


@pytest.mark.cpu
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("pack", [1, 2, 4])
def test_gqa_packing_and_splits(pack, splits):
    # m = 3 queries of 8 heads in groups of 4: a row block holds `pack` heads x 4 query rows (one padded)
    x = zoo_inputs("gqa", dtype=torch.float32, **_sizes("gqa", 3))
    got, ran = _run("gqa", x, _config(3, PACK=pack, KV_SPLITS=splits))
    assert [(c.PACK, c.KV_SPLITS) for c in ran] == [(pack, splits)]
    assert _rel(got, einattn.compile("gqa", target="reference")(**x)) <= 1e-4


@pytest.mark.cpu
def test_auto_chooses_per_call_and_keeps_the_tile_source():
    t = parse_target("cuda:sm_90")
    b, plan = get_backend(t), make_plan(einattn.load_spec("gqa"))
    art = b.prepare(plan, t, {})
    sizes = {"b": 2, "h": 32, "g": 4, "m": 8, "n": 4096, "d": 128, "e": 128}
    dec = art.at(sizes)
    assert dec.program == "decode" and dec.config.PACK == 8 and dec.config.KV_SPLITS > 1
    assert "row_h = " in dec.source and "(idx_h // p_r) * stride_K_1" in dec.source
    tile = art.at({**sizes, "m": 9})
    assert tile.program == "tile" and tile.config.KV_SPLITS == 1
    # the tile program's source is the one shipped tuning records hash, whatever the config's PROGRAM
    base = render(make_kernel_plan(plan)).source
    assert tile.source == art.source == b.prepare(plan, t, {"PROGRAM": "tile"}).source == base
    assert "decode" in b.describe(art, sizes) and "PACK=8" in b.describe(art, sizes)
    assert b.describe(art, {**sizes, "m": 9}).startswith("program: tile")
    # explicit keys are kept: no packing and no split asked, none made
    kept = b.prepare(plan, t, {"PACK": 1, "KV_SPLITS": 1}).at(sizes).config
    assert (kept.PROGRAM, kept.PACK, kept.KV_SPLITS) == ("decode", 1, 1)


@pytest.mark.cpu
def test_bad_pack_and_program_are_refused():
    x = zoo_inputs("gqa", dtype=torch.float32, **_sizes("gqa", 1))
    # 8 heads in groups of r = 4: 8 heads would span two KV heads
    with pytest.raises(UnsupportedError, match=r"PACK=8 must divide r=4 \(packed heads must read the same K"):
        einattn.compile("gqa", target="cuda", interpret=True, config={"PACK": 8})(**x)
    with pytest.raises(UnsupportedError, match=r"PACK=3 must divide"):
        einattn.compile("gqa", target="cuda", interpret=True, config={"PACK": 3})(**x)
    with pytest.raises(UnsupportedError, match=r"PACK=2: K and V of 'softmax' are read per grid index"):
        einattn.compile("softmax", target="cuda", interpret=True, config={"PACK": 2})
    with pytest.raises(UnsupportedError, match=r"PACK=2 with PROGRAM='tile'"):
        einattn.compile("gqa", target="cuda", interpret=True, config={"PACK": 2, "PROGRAM": "tile"})
    with pytest.raises(UnsupportedError, match=r"PROGRAM='fast'.*'auto', 'tile', 'decode'"):
        einattn.compile("gqa", target="cuda", interpret=True, config={"PROGRAM": "fast"})
    with pytest.raises(UnsupportedError, match=r"KV_SPLITS=2.*2 passes"):
        einattn.compile("centered_relu", target="cuda", interpret=True, config={"PROGRAM": "decode", "KV_SPLITS": 2})


AOT_SIZES = {"b": 1, "h": 8, "g": 2, "m": 1, "n": 1024, "d": 64, "e": 64}


@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize("target", ["cuda:sm_80", "cuda:sm_90", "rocm:gfx90a", "rocm:gfx942"])
def test_aot_build_of_the_decode_kernel(target, splits):
    t = parse_target(target)
    b = get_backend(t)
    art = b.prepare(make_plan(einattn.load_spec("gqa")), t, {"PROGRAM": "decode", "KV_SPLITS": splits})
    ck = b.build(art, AOT_SIZES, torch.float16)
    hw = art.hardware
    kernels = [ck] + ([ck.combine] if splits > 1 else [])
    assert (ck.combine is not None) == (splits > 1)
    assert "PACK" in art.at(AOT_SIZES).rendered.constexprs       # the decode program was built
    for k in kernels:
        r = k.resources
        assert 0 <= r["shared_memory"] <= hw.shared_memory_per_block
        assert 0 < r["registers"] <= hw.max_registers_per_thread
        if hw.kind == "cuda":
            assert k.files["cubin"][:4] == b"\x7fELF" and r["spill_stores"] >= 0
        else:
            assert k.files["hsaco"][:4] == b"\x7fELF" and r["spill_vgprs"] >= 0
    assert b.build(art, AOT_SIZES, torch.float16) is ck          # cached per shape
