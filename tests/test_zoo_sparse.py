"""Block-sparse zoo (spec v1.1: moba, topp_blocks, power, nsa) against the independent oracles of
``tests.zoo.SPARSE_ZOO``, which build each selection densely and apply it as one mask."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.ir import SpecError, UnsupportedError
from tests.helpers import QKV_INPUTS, assert_rel_close
from tests.zoo import SPARSE_ZOO, sizes

# small blocks so that a test length has several; the spec defaults are the papers' sizes
SMALL = {"moba": {"BS": 16}, "topp_blocks": {"BS": 16, "p": 0.7}, "power": {"BS": 8, "W": 1},
         "nsa": {"CL": 8, "CS": 4, "SB": 16, "k": 4, "W": 24}}


def inputs(name, n, seed=0, **sz):
    return SPARSE_ZOO[name].make_inputs(sizes(n=n, **{"b": 1, "h": 4, "g": 2, **sz}), torch.Generator().manual_seed(seed))


def oracle(name, x, **ov):
    v = SPARSE_ZOO[name]
    return v.torch_ref(x, {**v.params, **SMALL[name], **ov})


@pytest.mark.parametrize("n", [64, 131])        # a whole number of blocks, and a tail block
@pytest.mark.parametrize("name", list(SPARSE_ZOO))
def test_reference_and_streaming_match_the_oracle(name, n):
    x = inputs(name, n)
    want = oracle(name, x)
    got = einattn.compile(name, target="reference", **SMALL[name])(**x)
    assert got.dtype == torch.float64
    assert_rel_close(got, want, 1e-12, f"{name} reference")
    k = einattn.compile(name, target="streaming", config={"BLOCK_N": 16}, **SMALL[name])
    assert_rel_close(k(**x), want, 1e-5, f"{name} streaming fp32")
    assert_rel_close(k(**{a: t.double() for a, t in x.items()}), want, 1e-12, f"{name} streaming fp64")


@pytest.mark.parametrize("name", list(SPARSE_ZOO))
def test_the_selection_skips_key_blocks(name):
    """At the test sizes the selections bite: per query token (tile 1) fewer key blocks than
    causal attention visits, and with topk never more than k."""
    x = inputs(name, 160)
    k = einattn.compile(name, target="streaming", **SMALL[name])
    (lists,) = k.block_mask(**x, tile=1).values()
    num = lists["kv_num_blocks"]
    bs = SMALL[name].get("BS", SMALL[name].get("SB"))
    causal = torch.arange(160) // bs + 1
    assert (num <= causal).all() and (num < causal).any()
    if "k" in SMALL[name]:
        assert num.max() <= SMALL[name]["k"]
    assert (num >= 1).all()                     # the own block is always in


@pytest.mark.parametrize("ov", [{"k": 50}, {"k": 1}, {"k": 0}])
def test_moba_k_past_the_blocks_and_small_k(ov):
    """k larger than the number of blocks keeps every earlier block (= causal attention);
    k = 1 and k = 0 keep the own block only."""
    x = inputs("moba", 100)
    got = einattn.compile("moba", target="reference", **{**SMALL["moba"], **ov})(**x)
    assert_rel_close(got, oracle("moba", x, **ov), 1e-12, str(ov))
    if ov["k"] == 50:
        causal = einattn.compile("causal", target="reference")(**x)
        assert_rel_close(got, causal, 1e-12, "k past the blocks = causal")


def test_ties_break_to_the_lower_block():
    """All gate scores equal (Q = 0): MoBA keeps the own block and the lowest earlier ones."""
    x = inputs("moba", 96)
    x["Q"] = torch.zeros_like(x["Q"])
    k = einattn.compile("moba", target="streaming", **SMALL["moba"])
    sel = k.select(**x)["Sel"]
    m = 95                                  # block 5: own 5, then 0 (lowest) with k = 3 -> {0, 1, 5}
    assert sel[0, 0, m].nonzero().flatten().tolist() == [0, 1, 5]
    assert_rel_close(k(**x), oracle("moba", x), 1e-5, "ties")


def test_topp_zero_keeps_the_own_block_only():
    x = inputs("topp_blocks", 80)
    got = einattn.compile("topp_blocks", target="reference", **{**SMALL["topp_blocks"], "p": 0.0})(**x)
    assert_rel_close(got, oracle("topp_blocks", x, p=0.0), 1e-12, "p = 0")


@pytest.mark.parametrize("ov, match", [
    ({"k": -1}, "k must be a non-negative integer"), ({"k": 2.5}, "k must be a non-negative integer"),
    ({"BS": 0}, "block size 'BS' of block index 'j' must be a positive integer"),
    ({"BS": 7.5}, "must be a positive integer"),
])
def test_bad_amounts_and_block_sizes_are_clear_errors(ov, match):
    x = inputs("moba", 64)
    with pytest.raises(SpecError, match=match):
        einattn.compile("moba", target="reference", **{**SMALL["moba"], **ov})(**x)


def test_topp_out_of_range_is_an_error():
    with pytest.raises(SpecError, match="p must lie in"):
        einattn.compile("topp_blocks", target="reference", p=1.5)(**inputs("topp_blocks", 64))


CPU = {"BLOCK_N": 16, "BLOCK_M": 16, "SCORE_RI": 16, "PROGRAM": "tile"}


@pytest.mark.parametrize("n", [64, 131])
@pytest.mark.parametrize("name", list(SPARSE_ZOO))
def test_cpu_block_sparse_kernels_match_the_oracle(name, n):
    """Stage B on the cpu kernel, its key loop over the host-made tile lists (backends/tiles.py)."""
    x = inputs(name, n)
    k = einattn.compile(name, target="cpu", config=CPU, **SMALL[name])
    assert k.attend._artifact.kp.tile_lists
    assert_rel_close(k(**x), oracle(name, x), 2e-5, f"{name} cpu")


@pytest.mark.parametrize("name", list(SPARSE_ZOO))
def test_the_cpu_lists_skip_tiles_and_visit_all_with_a_nonfinite_key(name):
    from einattn.backends.tiles import visit_lists
    from einattn.ir import bind_sizes, eval_params
    x = inputs(name, 160)
    k = einattn.compile(name, target="cpu", config=CPU, **SMALL[name])
    kp = k.attend._artifact.kp
    xb = {**x, **k.select(**x)}
    xb = {t.name: xb[t.name] for t in kp.cascade.inputs}
    sz = bind_sizes(kp.cascade, {a: tuple(t.shape) for a, t in xb.items()})
    pr = eval_params(kp.cascade, sz, {a: b for a, b in SMALL[name].items() if a in {p.name for p in kp.cascade.params}})
    count, tiles, frac = visit_lists(kp, xb, sz, pr, 16, 16)
    assert count.shape == tiles.shape[:1] and frac <= 0.55           # causal alone visits 55% of 10 x 10
    # per query row (a tile of one token) the selections bite for every variant
    assert visit_lists(kp, xb, sz, pr, 1, 16)[2] < 0.5
    xb["K"][0, 0, 3, 0] = float("nan")
    assert visit_lists(kp, xb, sz, pr, 16, 16)[2] == 1.0
    x["K"][0, 0, 3, 0] = float("nan")
    got, want = k(**x), oracle(name, x)
    assert torch.equal(got.isnan(), want.isnan())


@pytest.mark.parametrize("name", list(SPARSE_ZOO))
def test_triton_block_sparse_kernels_match_the_oracle_in_the_interpreter(name):
    x = inputs(name, 131)
    k = einattn.compile(name, target="cuda", interpret=True, config={"BLOCK_N": 16, "BLOCK_M": 16}, **SMALL[name])
    assert k.attend._artifact.plan.tile_lists
    src = k.attend._artifact.rendered.source
    assert "for kt_i in range(0, tl.load(kv_count_ptr + tq))" in src
    # a key-block read loads one value per row where BLOCK_N divides the block size (KB_<param>),
    # else gathers per element: SMALL runs both (BS = 16 and SB = 16 against power's BS = 8)
    blocks = "SB" if name == "nsa" else "BS"
    assert f"(start_n // p_{blocks}) * stride_" in src and f"if KB_{blocks} else" in src
    assert_rel_close(k(**x), oracle(name, x), 2e-5, f"{name} triton")


@pytest.mark.parametrize("target", ["cuda:sm_80", "cuda:sm_90", "rocm:gfx90a", "rocm:gfx942"])
def test_block_sparse_kernels_compile_ahead_of_time(target, tmp_path):
    """`einattn compile` of a v1.1 spec builds its attention stage, the tile lists as int32 arguments."""
    import json
    from einattn.cli import main
    out = tmp_path / "k"
    assert main(["compile", "power", "--target", target, "--shape", "b=1,h=2,m=512,n=512,d=64,e=64",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["resources"].get("registers")
    assert report["constexprs"]["KB_BS"] is True          # BLOCK_N divides BS = 64: one load per row
    assert "kv_tiles_ptr" in (out / "kernel.py").read_text()


def test_a_mask_whose_empty_tile_still_contributes_is_refused_on_cpu():
    text = einattn.specs.zoo_path("power").read_text().replace(
        "S[b,h,m,n], -inf)", "S[b,h,m,n], 0.0)")
    with pytest.raises(UnsupportedError, match="still contributes"):
        einattn.compile(text, target="cpu")


def test_unbuilt_configs_say_so():
    x = inputs("power", 64)
    with pytest.raises(UnsupportedError, match="backward of a block-sparse cascade is not built"):
        einattn.compile("power", target="streaming", **SMALL["power"])(**{**x, "Q": x["Q"].requires_grad_()})
    with pytest.raises(UnsupportedError, match="KV_SPLITS=2: the key loop of 'power_attend' visits host-made lists"):
        einattn.compile("power", target="cpu", config={**CPU, "KV_SPLITS": 2})(**inputs("power", 64))
    with pytest.raises(UnsupportedError, match="decode program with a block-sparse key loop is not built on triton"):
        einattn.compile("power", target="cuda", interpret=True, config={"PROGRAM": "decode"})(**inputs("power", 8))


def test_short_queries_get_no_split_and_cpu_decode_lists_match():
    """A call with few query rows: the cpu resolves to one part (no KV_SPLITS with lists); the cpu
    decode program (a task = PACK heads of a GQA group x BLOCK_M tokens) visits its heads' union."""
    x = inputs("nsa", 64, h=8)
    want = oracle("nsa", x)
    k = einattn.compile("nsa", target="cpu", **SMALL["nsa"])
    short = {a: t[:, :, :4] if a in ("Q", "Gc", "Gs", "Gw") else t for a, t in x.items()}
    assert_rel_close(k(**short), oracle("nsa", short), 2e-5, "m=4")
    for cfg in ({"PROGRAM": "decode", "PACK": 4, "BLOCK_M": 1}, {"PROGRAM": "decode", "PACK": 2, "BLOCK_M": 4}):
        k = einattn.compile("nsa", target="cpu", config={**cfg, "BLOCK_N": 16}, **SMALL["nsa"])
        assert_rel_close(k(**x), want, 2e-5, str(cfg))


def test_explain_shows_both_stages_and_the_key_blocks():
    text = str(einattn.explain("nsa"))
    assert "stage A (select" in text and "stage B (attend" in text
    assert "Sel[b, h // r, m, n // SB] (key blocks of SB, per [b, h // r, m] (shared: h // r))" in text
    assert "one token x its GQA group" in text and "SparseKernel.choose" in text and "plan: 1 pass(es)" in text


def test_a_sparse_kernel_pickles():
    import pickle
    k = einattn.compile("power", target="streaming", **SMALL["power"])
    x = inputs("power", 40)
    assert torch.equal(pickle.loads(pickle.dumps(k))(**x), k(**x))


def test_the_cli_checks_and_explains_a_block_sparse_spec(capsys):
    from einattn.cli import main
    assert main(["check", "power", "--target", "cpu", "--shape", "b=1,h=2,m=100,n=100,d=16,e=16",
                 "--param", "BS=16"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["explain", "moba", "--kernel", "--shape", "b=1,h=2,m=300,n=300,d=32,e=32"]) == 0
    out = capsys.readouterr().out
    assert "block-sparse: the key loop visits a host-made list" in out
    assert "a block-sparse key loop runs in the tile program on Triton" in out


def test_a_group_shared_selection_picks_its_program_by_cost_on_cpu():
    """NSA's selection is shared by the heads of a GQA group: with no config the cpu kernel holds the
    tile program and the decode program (one token x its group per task) and takes the cheaper by
    the share of key tiles each visits; both give the oracle's result."""
    x = inputs("nsa", 160, h=8)
    k = einattn.compile("nsa", target="cpu", **SMALL["nsa"])
    assert k.group is not None and k.group._artifact.config.PROGRAM == "decode"
    assert_rel_close(k(**x), oracle("nsa", x), 2e-5, "auto")
    assert k.last_choice.split(":")[0] in ("tile", "token x group") and "x 3.0 per pair" in k.last_choice
    assert einattn.compile("moba", target="cpu", **SMALL["moba"]).group is None      # per head: no group
    assert einattn.compile("nsa", target="cpu", config=CPU, **SMALL["nsa"]).group is None  # a config pins it


def test_a_pass_without_a_key_block_read_still_visits_every_tile():
    """Two passes: the first (an unmasked row max) reads no selection, so it must see every key
    tile; the second (sigmoid of the masked scores minus that max) visits only the listed ones."""
    text = einattn.specs.zoo_path("topp_blocks").read_text().replace(
        "  - M[b,h,m] max= Sm[b,h,m,n]\n  - P[b,h,m,n] = exp(Sm[b,h,m,n] - M[b,h,m])",
        "  - M[b,h,m] max= S[b,h,m,n]\n  - P[b,h,m,n] = sigmoid(Sm[b,h,m,n] - M[b,h,m])")
    x = inputs("topp_blocks", 131)
    want = einattn.compile(text, target="reference", **SMALL["topp_blocks"])(**x)
    k = einattn.compile(text, target="cpu", config=CPU, **SMALL["topp_blocks"])
    assert len(k.attend.plan.schedule) == 2 and k.attend._artifact.kp.tile_lists
    assert_rel_close(k(**x), want, 2e-5, "cpu, two passes")
    kt = einattn.compile(text, target="cuda", interpret=True, config={"BLOCK_N": 16, "BLOCK_M": 16},
                         **SMALL["topp_blocks"])
    assert_rel_close(kt(**x), want, 2e-5, "triton, two passes")


QUERY_BLOCKS = "einattn: 1.1\nname: query_block_selection\n" + QKV_INPUTS + """\
params:
  scale: 1 / sqrt(d)
  BM: 16
  BS: 16
  k: 2
blocks:
  i: m // BM
  j: n // BS
cascade:
  - Qb[b,h,i,d] = Q[b,h,m,d] * where(m // BM == i, 1.0, 0.0)
  - Kb[b,h,j,d] = K[b,h,n,d] * where(n // BS == j, 1.0, 0.0)
  - G[b,h,i,j] = where(j <= i, Qb[b,h,i,d] * Kb[b,h,j,d], -inf)
  - Sel[b,h,i,j] = topk(G[b,h,i,j], k)
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale
  - Sm[b,h,m,n] = where((Sel[b,h,m // BM,n // BS] > 0) & (n <= m), S[b,h,m,n], -inf)
  - M[b,h,m] max= Sm[b,h,m,n]
  - P[b,h,m,n] = exp(Sm[b,h,m,n] - M[b,h,m])
  - L[b,h,m] = P[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
outputs: [O]
"""


def test_a_selection_per_query_block_is_listed_per_tile():
    """Sel[b,h,i,j] with i = m // BM, read as Sel[.., m // BM, n // BS]: one selection per query block,
    so a tile of BM tokens visits exactly its block's k key blocks (no union)."""
    from einattn.backends.tiles import visit_lists
    from einattn.ir import bind_sizes, eval_params
    x = inputs("moba", 160)
    want = einattn.compile(QUERY_BLOCKS, target="reference")(**x)
    k = einattn.compile(QUERY_BLOCKS, target="cpu", config=CPU)
    assert_rel_close(k(**x), want, 2e-5, "cpu")
    kt = einattn.compile(QUERY_BLOCKS, target="cuda", interpret=True, config={"BLOCK_N": 16, "BLOCK_M": 16})
    assert_rel_close(kt(**x), want, 2e-5, "triton")
    kp = k.attend._artifact.kp
    xb = {**x, **k.select(**x)}
    sz = bind_sizes(kp.cascade, {a: tuple(t.shape) for a, t in xb.items()})
    count, _, _ = visit_lists(kp, xb, sz, eval_params(kp.cascade, sz), 16, 16)
    assert int(count.max()) <= 2 and (count >= 1).all()


def test_the_derived_backward_refuses_a_block_sparse_spec():
    with pytest.raises(UnsupportedError, match="backward of a block-sparse cascade is not built"):
        einattn.explain_backward("moba")


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("pack", [None, 1, 2, 4, 8])
def test_lists_decided_per_gqa_group_equal_the_lists_per_head(groups, pack, monkeypatch):
    """A selection read as Sel[b, h // r, ..] is decided once per group and spread to the heads or
    the decode program's packs (backends/tiles._grouped_grid); the lists equal those made per head."""
    from einattn.backends import tiles
    from einattn.compiler.kernel_plan import make_kernel_plan
    from einattn.compiler.selection import split
    from einattn.ir import bind_sizes, eval_params
    kp = make_kernel_plan(split(einattn.load_spec("nsa")).plan)
    g = torch.Generator().manual_seed(groups)
    b, h, n, d = 2, 8, 150, 4
    x = {"Q": torch.randn(b, h, n, d, generator=g), "K": torch.randn(b, groups, n, d, generator=g),
         "V": torch.randn(b, groups, n, d, generator=g), "Sel": (torch.rand(b, groups, n, 3, generator=g) < 0.3).float()}
    x.update({k: torch.randn(b, h, n, generator=g) for k in ("Gc", "Gs", "Gw", "Oc")})
    x["Oc"] = torch.randn(b, h, n, d, generator=g)
    x = {t.name: x[t.name] for t in kp.cascade.inputs}
    sz = bind_sizes(kp.cascade, {a: tuple(t.shape) for a, t in x.items()})
    pr = eval_params(kp.cascade, sz, {"SB": 64, "W": 40})
    assert tiles._grouped_grid(kp, pr) == ({"h": h // groups} if h // groups > 1 else {})
    for bm in (1, 16):
        got = tiles.visit_lists(kp, x, sz, pr, bm, 32, ("h", pack) if pack else None)
        with monkeypatch.context() as mp:
            mp.setattr(tiles, "_grouped_grid", lambda kp, params: {})
            want = tiles.visit_lists(kp, x, sz, pr, bm, 32, ("h", pack) if pack else None)
        assert got[2] < 1.0 and all(torch.equal(a, c) for a, c in zip(got[:2], want[:2])) and got[2] == want[2]
