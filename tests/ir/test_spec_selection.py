"""Spec format v1.1: block indices and selection statements (docs/spec.md, "Block-sparse attention")."""
from __future__ import annotations

import pytest

import einattn
from einattn.ir import SpecError, parse_spec
from tests.helpers import QKV_INPUTS

HEAD = "einattn: 1.1\nname: t\n" + QKV_INPUTS + """\
params:
  BS: 16
  k: 2
blocks:
  j: n // BS
cascade:
"""
GATE = ["C[j] = where(n // BS == j, 1.0, 0.0)",
        "Kb[b,h,j,d] = K[b,h,n,d] * where(n // BS == j, 1.0, 0.0) / C[j]",
        "G[b,h,m,j] = Q[b,h,m,d] * Kb[b,h,j,d]"]
ATTEND = ["S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]",
          "Sm[b,h,m,n] = where(Sel[b,h,m,n // BS] > 0, S[b,h,m,n], -inf)",
          "M[b,h,m] max= Sm[b,h,m,n]",
          "P[b,h,m,n] = exp(Sm[b,h,m,n] - M[b,h,m])",
          "L[b,h,m] = P[b,h,m,n]",
          "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]"]


def spec(*stmts, head=HEAD, outputs="[O]"):
    return head + "".join(f"  - {s}\n" for s in stmts) + f"outputs: {outputs}\n"


def test_a_selection_spec_parses_into_blocks_and_a_select_statement():
    c = parse_spec(spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND))
    assert [str(b) for b in c.blocks] == ["j = n // BS"]
    sel = c.stmt("Sel")
    assert sel.select[0] == "topk" and str(sel.select[1]) == "k"
    assert c.selects and "topk(G[b, h, m, j], k)" in str(c)
    assert "blocks" in c.to_json() and c.structural_hash() != parse_spec(
        spec(*GATE, "Sel[b,h,m,j] = topp(G[b,h,m,j], k)", *ATTEND)).structural_hash()


def test_v1_specs_keep_their_hashes():
    # blocks and select appear in the canonical JSON only where used
    assert "blocks" not in einattn.load_spec("softmax").to_json()
    assert einattn.load_spec("softmax").structural_hash() == parse_spec(
        einattn.specs.zoo_path("softmax").read_text().replace("einattn: 1", "einattn: 1.1")).structural_hash()


@pytest.mark.parametrize("text, match", [
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND, head=HEAD.replace("1.1", "1")),
     "'blocks' needs spec format 1.1"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND, head=HEAD.replace("1.1", "2")),
     "unsupported spec format version"),
    (spec(*GATE, "Sel[b,h,m,j] = 2 * topk(G[b,h,m,j], k)", *ATTEND), "must be the whole right side"),
    (spec(*GATE, "Sel[b,h,m,j] max= topk(G[b,h,m,j], k)", *ATTEND), "written with '='"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j])", *ATTEND), "takes 2 arguments"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], Q[b,h,m,d])", *ATTEND), "must be a number, a param"),
    (spec(*GATE, "Sel[b,h,j,m] = topk(G[b,h,m,j], k)", *ATTEND), "last left-hand index"),
    (spec(*GATE, "Sel[b,m,j] = topk(G[b,h,m,j], k)", *ATTEND).replace("Sel[b,h,m,n", "Sel[b,m,n"),
     "reduces \\[h\\]"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j] > 0, k)", *ATTEND), "boolean"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND).replace("j: n // BS", "j: n // 16"),
     "bad block index 'j'"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND).replace("j: n // BS", "m: n // BS"),
     "clashes"),
    (spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND).replace("Sel[b,h,m,n // BS]", "Sel[b,h,m,n // k]"),
     "other indices than it was defined"),
])
def test_bad_selection_specs_are_clear_errors(text, match):
    with pytest.raises(SpecError, match=match) as e:
        parse_spec(text, "sel.yaml")
    assert "sel.yaml" in str(e.value)


def test_the_selection_stage_must_not_keep_the_key_index():
    from einattn.compiler.selection import split
    c = parse_spec(spec(*GATE, "Z[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]", "Zb[b,h,m,j] = Z[b,h,m,n] * "
                        "where(n // BS == j, 1.0, 0.0)", "Sel[b,h,m,j] = topk(Zb[b,h,m,j], k)", *ATTEND))
    with pytest.raises(SpecError, match="keeps the key index 'n'"):
        split(c)


def test_an_all_selection_cascade_is_refused():
    from einattn.compiler.selection import split
    with pytest.raises(SpecError, match="output 'Sel' is computed by the selection stage"):
        split(parse_spec(spec(*GATE, "Sel[b,h,m,j] = topk(G[b,h,m,j], k)", *ATTEND, outputs="[O, Sel]")))


def test_make_plan_refuses_a_selecting_cascade():
    from einattn.compiler import make_plan
    with pytest.raises(einattn.ir.UnsupportedError, match="two stages"):
        make_plan(einattn.load_spec("moba"))


def test_a_v1_input_block_mask_gets_tile_lists():
    """A caller-given block mask (a v1 input read as Bm[b,h,m,n // BS], FlexAttention's BlockMask as a
    tensor) needs no selection stage: the kernel plan gets its sites and the cpu kernel visits only the
    listed key tiles; a mask too short for the keys is a clear error."""
    import torch
    text = HEAD.replace("einattn: 1.1", "einattn: 1").replace("  V: [b, h, n, e]\n", "  V: [b, h, n, e]\n  Bm: [b, h, m, t]\n")
    text = text.replace("blocks:\n  j: n // BS\n", "") + "".join(f"  - {s}\n" for s in ATTEND).replace(
        "Sel[", "Bm[") + "outputs: [O]\n"
    k = einattn.compile(text, target="cpu", config={"BLOCK_N": 16, "BLOCK_M": 16, "SCORE_RI": 16, "PROGRAM": "tile"})
    assert k._artifact.kp.tile_lists
    g = torch.Generator().manual_seed(0)
    q, kk, v = (torch.randn(1, 2, 40, 8, generator=g) for _ in range(3))
    bm = (torch.rand(1, 2, 40, 3, generator=g) < 0.5).float()
    ref = einattn.compile(text, target="reference")(q, kk, v, bm)
    assert (k(q, kk, v, bm).double() - ref).abs().max() < 1e-5
    with pytest.raises(SpecError, match="reads past the end of dim 't'"):
        k(q, kk, v, bm[..., :2])
