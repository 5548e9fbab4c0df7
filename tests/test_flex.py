"""einattn.flex.flex_attention against torch's FlexAttention (eager, CPU, float32).

The eight variants of FlexAttention's own benchmark (noop, causal, alibi, sliding window,
prefix LM, document mask, softcap, head bias), each capturing its tensors the way users do,
at L != S and odd sizes, on the `cpu` (TVM) and `reference` targets; GQA, return_lse and
fully masked rows; the trace and kernel caches; the errors.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import einattn
from einattn.backends.torch.check import TOLERANCE
from einattn import flex as F
from einattn.flex import flex_attention

tflex = pytest.importorskip("torch.nn.attention.flex_attention")
B, H, L, S = 2, 4, 37, 53
TOL = 1e-4              # max |err| / max |ref|, fp32 kernel vs fp32 FlexAttention


def variants(h: int = H, l: int = L, s: int = S, seed: int = 0) -> dict:
    """name -> (score_mod, mask_mod); the captured tensors are fresh for each call."""
    g = torch.Generator().manual_seed(seed)
    slopes = torch.exp2(-8.0 * torch.arange(1, h + 1) / h)                 # ALiBi's slopes
    head_bias = torch.randn(h, generator=g)
    bias = torch.randn(h, l, s, generator=g)
    docs = torch.sort(torch.randint(0, 4, (max(l, s),), generator=g)).values   # int64 ids
    prefix = torch.tensor([5, 40], dtype=torch.int32)                       # per batch
    window = 8
    return {
        "noop": (None, None),
        "causal": (None, lambda b, hh, q, kv: q >= kv),
        "alibi": (lambda sc, b, hh, q, kv: sc + slopes[hh] * (kv - q), None),
        "sliding_window": (None, lambda b, hh, q, kv: (q >= kv) & (q - kv <= window)),
        "prefix_lm": (None, lambda b, hh, q, kv: (kv <= q) | (kv < prefix[b])),
        "document": (None, lambda b, hh, q, kv: docs[q] == docs[kv]),
        "softcap": (lambda sc, b, hh, q, kv: 1.5 * torch.tanh(sc / 1.5), None),
        "head_bias": (lambda sc, b, hh, q, kv: sc + head_bias[hh], None),
        "dense_bias": (lambda sc, b, hh, q, kv: sc + bias[hh, q, kv], None),
    }


def qkv(h=H, hkv=H, l=L, s=S, e=16, ev=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, h, l, e, generator=g), torch.randn(B, hkv, s, e, generator=g),
            torch.randn(B, hkv, s, ev, generator=g))


def flex_ref(q, k, v, score_mod=None, mask_mod=None, **kw):
    """torch's FlexAttention, eager on the CPU: (out, lse)."""
    bm = None if mask_mod is None else tflex.create_block_mask(
        mask_mod, q.size(0), q.size(1), q.size(2), k.size(2), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, aux = tflex.flex_attention(q, k, v, score_mod=score_mod, block_mask=bm,
                                        return_aux=tflex.AuxRequest(lse=True), **kw)
    return out, aux.lse


def rel_err(x, ref) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def check_lse(lse, ref_lse):
    assert lse.dtype == torch.float32
    assert torch.equal(lse.isneginf(), ref_lse.isneginf())
    fin = ref_lse.isfinite()
    assert (lse[fin] - ref_lse[fin]).abs().max().item() < TOL * ref_lse[fin].abs().max().item() + 1e-5


# -- the benchmark's variants --------------------------------------------------------------

@pytest.mark.cpu
@pytest.mark.parametrize("e,ev", [(16, 16), (32, 24)])
@pytest.mark.parametrize("name", list(variants()))
def test_variants_match_flex(name, e, ev):
    score_mod, mask_mod = variants()[name]
    q, k, v = qkv(e=e, ev=ev)
    ref, ref_lse = flex_ref(q, k, v, score_mod, mask_mod)
    for target in ("cpu", "reference"):
        out, lse = flex_attention(q, k, v, score_mod, mask_mod, return_lse=True, target=target)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert rel_err(out, ref) < TOL, (name, target)
        check_lse(lse, ref_lse)


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_gqa_alibi_document_lse(target):
    """GQA (8 query heads on 2 KV heads) with a score_mod and a mask_mod both capturing tensors."""
    sm = variants(h=8)["alibi"][0]
    mm = variants(h=8)["document"][1]
    q, k, v = qkv(h=8, hkv=2)
    ref, ref_lse = flex_ref(q, k, v, sm, mm, enable_gqa=True, scale=0.2)
    out, lse = flex_attention(q, k, v, sm, mm, enable_gqa=True, return_lse=True, scale=0.2, target=target)
    assert rel_err(out, ref) < TOL
    check_lse(lse, ref_lse)


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "reference"])
def test_fully_masked_rows(target):
    """Rows whose keys are all masked: 0 output and lse -inf, as FlexAttention gives."""
    mm = lambda b, h, q, kv: kv > q + 40                  # noqa: E731  rows q >= 13 see no key
    sm = lambda sc, b, h, q, kv: torch.where(q == 3, -float("inf"), sc)    # noqa: E731  row 3 too
    q, k, v = qkv()
    ref, ref_lse = flex_ref(q, k, v, sm, mm)
    out, lse = flex_attention(q, k, v, sm, mm, return_lse=True, target=target)
    assert bool((ref[:, :, 13:] == 0).all()) and bool(ref_lse[:, :, 13:].isneginf().all())
    assert bool((out[:, :, 13:] == 0).all()) and bool((out[:, :, 3] == 0).all())
    assert rel_err(out, ref) < TOL
    check_lse(lse, ref_lse)


# -- what the front end builds ---------------------------------------------------------------

def test_cascades_are_the_zoos():
    """No mods is the zoo's softmax, a kv_idx <= q_idx mask its causal, GQA its gqa: the same hash."""
    assert F.trace_cascade().hash == einattn.load_spec("softmax").structural_hash()
    causal = F.trace_cascade(mask_mod=lambda b, h, q, kv: kv <= q)
    assert causal.hash == einattn.load_spec("causal").structural_hash()
    assert F.trace_cascade(gqa=True).hash == einattn.load_spec("gqa").structural_hash()
    lse = F.trace_cascade(lse=True).cascade
    assert lse.structural_hash() == einattn.load_spec("lse").structural_hash()


def test_captured_tensors_become_inputs():
    sm, mm = variants()["alibi"][0], variants()["document"][1]
    fc = F.trace_cascade(sm, mm)
    assert [(t.name, t.indices) for t in fc.cascade.inputs[3:]] == [("X0", ("h",)), ("X1", ("m",)), ("X2", ("n",))]
    assert str(fc.cascade.stmts[1]) == "Sm[b,h,m,n] = where(X1[m] == X2[n], S[b, h, m, n] + X0[h] * (n - m), -inf)"
    plan = einattn.explain(fc.cascade)
    assert (plan.naive_passes, plan.passes) == (3, 1)


# the mapping table: one mod per row, checked on the reference target against FlexAttention
MAPPED = {
    "arith": lambda sc, b, h, q, kv: (sc * 2 - 1) / 3 + (q - kv) // 4 + (q + kv) % 5 - (-sc) ** 2 * 0.1,
    "unary": lambda sc, b, h, q, kv: torch.exp(sc / 4) + torch.log(sc.abs() + 1) + torch.sqrt(sc * sc + 1)
    + torch.rsqrt(sc * sc + 1) + torch.sigmoid(sc) + torch.relu(sc) + torch.sign(sc) + torch.square(sc / 3),
    "exp2_log2": lambda sc, b, h, q, kv: torch.log2(torch.exp2(sc) + 1),
    "minmax_clamp": lambda sc, b, h, q, kv: torch.maximum(sc, torch.minimum(sc * 2, q.float() / 10))
    + torch.clamp(sc, -0.5, 0.5) + torch.clamp(sc, min=0.1),
    "softplus": lambda sc, b, h, q, kv: torch.nn.functional.softplus(sc, beta=2.0) + torch.nn.functional.softplus(sc),
    "rounding": lambda sc, b, h, q, kv: torch.floor(sc) + torch.ceil(sc * 3) + torch.trunc(sc * 2)
    + torch.div(q - kv, 3, rounding_mode="trunc") + torch.div(q - kv, 3, rounding_mode="floor"),
    "log1p_expm1": lambda sc, b, h, q, kv: torch.log1p(sc.abs()) + torch.expm1(sc / 4)
    + torch.reciprocal(sc.abs() + 1),
    "bool_as_number": lambda sc, b, h, q, kv: sc + (q > kv) * 0.5 - (q == kv).float() + (kv < 10).to(torch.int32),
    "where_logic": lambda sc, b, h, q, kv: torch.where(((q > kv) ^ (kv % 3 == 0)) | ~(q < 20), sc, sc / 2),
    "int_conversion": lambda sc, b, h, q, kv: sc + (sc * 3).to(torch.int32) + torch.ones_like(sc)
    + torch.zeros_like(sc),
}


@pytest.mark.cpu
@pytest.mark.parametrize("name", list(MAPPED))
def test_mapped_ops(name):
    q, k, v = qkv(l=11, s=17)
    ref, _ = flex_ref(q, k, v, MAPPED[name])
    assert rel_err(flex_attention(q, k, v, MAPPED[name], target="reference"), ref) < 1e-5, name


@pytest.mark.cpu
def test_mapped_ops_on_cpu():
    """Every row of the table in one mod, compiled once for the cpu target."""
    def every(sc, b, h, q, kv):
        return sum(mod(sc, b, h, q, kv) for mod in MAPPED.values()) / len(MAPPED)
    q, k, v = qkv(l=11, s=17)
    ref, _ = flex_ref(q, k, v, every)
    assert rel_err(flex_attention(q, k, v, every, target="cpu"), ref) < TOL


# -- caches ----------------------------------------------------------------------------------

@pytest.mark.cpu
def test_compiles_once_and_rebinds_captured_tensors():
    """A loop compiles once; the next batch's document ids (a new tensor of the same layout)
    reuse the trace and the kernel and are read."""
    F.clear_caches()
    q, k, v = qkv()
    outs = []
    for step in range(3):
        docs = torch.sort(torch.randint(0, 4, (S,), generator=torch.Generator().manual_seed(step))).values
        mm = lambda b, h, qi, kv: docs[qi] == docs[kv]    # noqa: E731  a new closure each step
        out = flex_attention(q, k, v, mask_mod=mm)
        assert rel_err(out, flex_ref(q, k, v, None, mm)[0]) < TOL
        outs.append(out)
    assert len(F._KERNELS) == 1 and len(F._TRACES) == 1
    assert not torch.equal(outs[0], outs[1])


def test_trace_reuse_follows_the_mods():
    F.clear_caches()
    window = 8
    slopes = torch.rand(4)
    mm = lambda b, h, q, kv: q - kv < window          # noqa: E731
    first = F.trace_cascade(mask_mod=mm)
    assert F.trace_cascade(mask_mod=mm).hash == first.hash and len(F._TRACES) == 1
    window = 4                                        # a changed closure value: a new trace  # noqa: F841
    assert F.trace_cascade(mask_mod=mm).hash != first.hash
    folded = lambda sc, b, h, q, kv: sc + (slopes * 2)[h]     # noqa: E731  computed from values
    fc = F.trace_cascade(folded)
    assert not fc.reusable and len(F._TRACES) == 2
    slopes.mul_(3)
    assert torch.equal(F.trace_cascade(folded).captured[0].tensor, slopes * 2)

    class Config:
        w = 3
    cfg = Config()
    assert F.mod_key(lambda b, h, q, kv: q - kv < cfg.w, []) is None          # traced every call


# -- arguments and errors ----------------------------------------------------------------------

@pytest.mark.cpu
def test_block_mask_argument():
    mm = variants()["sliding_window"][1]
    q, k, v = qkv()
    bm = tflex.create_block_mask(mm, B, H, L, S, device="cpu")
    want = flex_attention(q, k, v, mask_mod=mm, target="reference")
    assert torch.equal(flex_attention(q, k, v, block_mask=bm, target="reference"), want)
    assert torch.equal(flex_attention(q, k, v, None, bm, target="reference"), want)   # torch's positions
    with pytest.raises(einattn.SpecError, match="both mask_mod and block_mask"):
        flex_attention(q, k, v, mask_mod=mm, block_mask=bm)
    # a BlockMask made of block indices alone hides what its mask_mod (noop_mask) does not say
    layout = tflex.BlockMask.from_kv_blocks(torch.tensor([[[1, 2]]], dtype=torch.int32),
                                            torch.tensor([[[[0, 1], [0, 1]]]], dtype=torch.int32))
    q, k, v = qkv(h=1, l=256, s=256)
    with pytest.raises(einattn.UnsupportedError, match="noop_mask"):
        flex_attention(q, k, v, block_mask=layout, target="reference")


def test_gqa_needs_enable_gqa():
    q, k, v = qkv(h=4, hkv=2)
    with pytest.raises(ValueError, match="Try setting enable_gqa=True"):
        flex_attention(q, k, v, target="reference")
    q, k, v = qkv(h=4, hkv=3)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flex_attention(q, k, v, enable_gqa=True, target="reference")


UNSUPPORTED = [
    (lambda sc, b, h, q, kv: torch.sin(sc), "aten.sin"),
    (lambda sc, b, h, q, kv: sc + torch.rand(8)[q % 8], "computed subscript"),
    (lambda sc, b, h, q, kv: sc if q > 3 else -sc, "could not be traced"),
    (lambda sc, b, h, q, kv: sc + (q & kv), "bitwise arithmetic"),
    (lambda sc, b, h, q, kv: sc + torch.rand(4, 8)[h], "index every dim"),
    (lambda sc, b, h, q, kv: sc + torch.rand(8, 8)[q, q], "diagonal"),
]


@pytest.mark.parametrize("mod,match", UNSUPPORTED)
def test_unsupported_mods_raise(mod, match):
    q, k, v = qkv(l=5, s=8)
    with pytest.raises(einattn.UnsupportedError, match=match):
        flex_attention(q, k, v, mod, target="reference")


def test_captured_tensor_too_short():
    short = torch.rand(10)
    q, k, v = qkv(l=5, s=12)
    with pytest.raises(einattn.SpecError, match="past its end"):
        flex_attention(q, k, v, mask_mod=lambda b, h, qi, kv: short[kv] > 0.5, target="reference")


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtypes(target, dtype):
    """fp16 and bf16 come back in their dtype (lse fp32) on the reference and cpu targets, within
    the dtype's tolerance (docs/dtypes.md); float64 is refused on cpu with the conversion."""
    q, k, v = (t.to(dtype) for t in qkv(l=9, s=13))
    ref, ref_lse = flex_ref(q.float(), k.float(), v.float())
    out, lse = flex_attention(q, k, v, return_lse=True, target=target)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert rel_err(out, ref) < TOLERANCE[dtype] and rel_err(lse, ref_lse) < TOLERANCE[dtype]
    if target == "cpu":
        with pytest.raises(einattn.UnsupportedError, match="float32"):
            flex_attention(q.double(), k.double(), v.double(), target="cpu")


@pytest.mark.parametrize("target", ["cpu", "streaming"])
def test_gradients_reach_inputs_and_captured_tensors(target):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 33, 16, generator=g).requires_grad_() for _ in range(3))
    slope = torch.rand(2, generator=g).requires_grad_()

    def alibi(s, b, h, qi, ki):
        return s - slope[h] * (qi - ki)

    def causal(b, h, qi, ki):
        return ki <= qi
    einattn.flex_attention(q, k, v, score_mod=alibi, mask_mod=causal, target=target).sum().backward()
    ref = [t.detach().double().requires_grad_() for t in (q, k, v, slope)]
    dist = (torch.arange(33)[:, None] - torch.arange(33)[None, :]).double()
    s = ref[0] @ ref[1].transpose(-1, -2) / 4 - ref[3][:, None, None] * dist
    s = s.masked_fill(dist < 0, float("-inf"))
    (torch.softmax(s, -1) @ ref[2]).sum().backward()
    for got, want in zip((q, k, v, slope), ref):
        assert (got.grad.double() - want.grad).abs().max() <= 1e-4 * want.grad.abs().max()
