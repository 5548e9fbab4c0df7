"""Random block-sparse cascades (spec v1.1) on every target against the float64 reference.

Each case draws a block size, a gate (mean- or sum-pooled keys, per head or summed over the
heads, scaled or not), the blocks always in (own, first, none) and those never (later blocks,
none), a selection (``topk`` with k from 0 to past the blocks, or ``topp`` with p from 0 to 1), an
attention stage (softmax, sigmoid or relu attention, one branch over the selection or two
branches merged by their LSE) and a length (a tail block or not, queries = keys or fewer).
``streaming``, ``cpu`` and ``cuda`` (Triton's interpreter) must agree with the reference within
1e-4 of the largest output, or refuse with an UnsupportedError naming why. CI runs
``EINATTN_SPARSE_CASCADES`` (default 24) fixed-seed examples.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einattn
from einattn.ir import UnsupportedError
from tests.helpers import assert_rel_close

pytest.importorskip("tvm")
pytest.importorskip("triton")

EXAMPLES = int(os.environ.get("EINATTN_SPARSE_CASCADES", "24"))
CPU = {"BLOCK_N": 16, "BLOCK_M": 16, "SCORE_RI": 16, "PROGRAM": "tile"}
CUDA = {"BLOCK_N": 16, "BLOCK_M": 16}


@st.composite
def sparse_case(draw):
    bs = draw(st.sampled_from([8, 16, 24]))
    n = draw(st.integers(20, 90))
    m = draw(st.sampled_from([n, max(1, n - draw(st.integers(1, 19)))]))
    pool = draw(st.sampled_from(["mean", "sum"]))
    shared = draw(st.booleans())                    # one selection for all heads
    scaled = draw(st.booleans())
    always = draw(st.sampled_from(["own", "first", "none"]))
    never = draw(st.sampled_from(["later", "none"]))
    kind = draw(st.sampled_from(["topk", "topp"]))
    amount = draw(st.integers(0, 6)) if kind == "topk" else draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    attn = draw(st.sampled_from(["softmax", "sigmoid", "relu", "merge"]))
    causal = draw(st.booleans())
    h = "h" if not shared else ""
    hs = "b,h,m,j" if not shared else "b,m,j"
    lines = ["C[j] = where(n // BS == j, 1.0, 0.0)",
             "Kb[b,h,j,d] = K[b,h,n,d] * where(n // BS == j, 1.0, 0.0)" + (" / C[j]" if pool == "mean" else "")]
    lines.append(f"G[{hs}] = Q[b,h,m,d] * Kb[b,h,j,d]" + (" * scale" if scaled else ""))
    gate = f"G[{hs}]"
    if never == "later":
        gate = f"where(j <= m // BS, {gate}, -inf)"
    if always == "own":
        gate = f"where(j == m // BS, inf, {gate})"
    elif always == "first":
        gate = f"where(j == 0, inf, {gate})"
    lines += [f"Gm[{hs}] = {gate}", f"Sel[{hs}] = {kind}(Gm[{hs}], A)",
              "S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale"]
    sel = f"(Sel[b,{h + ',' if h else ''}m,n // BS] > 0)"
    cond = f"{sel} & (n <= m)" if causal else sel
    if attn == "softmax":
        lines += [f"Sm[b,h,m,n] = where({cond}, S[b,h,m,n], -inf)", "M[b,h,m] max= Sm[b,h,m,n]",
                  "P[b,h,m,n] = exp(Sm[b,h,m,n] - M[b,h,m])", "L[b,h,m] = P[b,h,m,n]",
                  "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]"]
    elif attn in ("sigmoid", "relu"):
        lines += [f"Sm[b,h,m,n] = where({cond}, S[b,h,m,n], -inf)",
                  f"O[b,h,m,e] = {attn}(Sm[b,h,m,n]) * V[b,h,n,e]"]
    else:                                           # own block and the others, merged by the LSE
        own = "(n // BS == m // BS)" + (" & (n <= m)" if causal else "")
        rest = f"{sel} & (n // BS != m // BS)" + (" & (n <= m)" if causal else "")
        for k, c in (("1", own), ("2", rest)):
            lines += [f"S{k}[b,h,m,n] = where({c}, S[b,h,m,n], -inf)", f"M{k}[b,h,m] max= S{k}[b,h,m,n]",
                      f"P{k}[b,h,m,n] = exp(S{k}[b,h,m,n] - M{k}[b,h,m])", f"L{k}[b,h,m] = P{k}[b,h,m,n]",
                      f"O{k}[b,h,m,e] = P{k}[b,h,m,n] * V[b,h,n,e] / L{k}[b,h,m]",
                      f"X{k}[b,h,m] = M{k}[b,h,m] + log(L{k}[b,h,m])"]
        lines += ["X[b,h,m] = max(X1[b,h,m], X2[b,h,m])", "W1[b,h,m] = exp(X1[b,h,m] - X[b,h,m])",
                  "W2[b,h,m] = exp(X2[b,h,m] - X[b,h,m])",
                  "O[b,h,m,e] = (O1[b,h,m,e] * W1[b,h,m] + O2[b,h,m,e] * W2[b,h,m]) / (W1[b,h,m] + W2[b,h,m])"]
    text = ("einattn: 1.1\nname: random_sparse\ninputs:\n  Q: [b, h, m, d]\n  K: [b, h, n, d]\n  V: [b, h, n, e]\n"
            f"params:\n  scale: 1 / sqrt(d)\n  BS: {bs}\n  A: {amount}\nblocks:\n  j: n // BS\ncascade:\n"
            + "".join(f"  - {x}\n" for x in lines) + "outputs: [O]\n")
    seed = draw(st.integers(0, 2 ** 16))
    return text, m, n, seed


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(sparse_case())
def test_random_sparse_cascades_agree_on_every_target(case):
    text, m, n, seed = case
    g = torch.Generator().manual_seed(seed)
    x = {"Q": torch.randn(1, 2, m, 16, generator=g), "K": torch.randn(1, 2, n, 16, generator=g),
         "V": torch.randn(1, 2, n, 16, generator=g)}
    want = einattn.compile(text, target="reference")(**x)
    for target, kw in (("streaming", {"config": {"BLOCK_N": 16}}), ("cpu", {"config": CPU}),
                       ("cuda", {"config": CUDA, "interpret": True})):
        try:
            k = einattn.compile(text, target=target, **kw)
        except UnsupportedError as e:
            assert target != "streaming" and "decode" not in str(e), f"{target}: {e}\n{text}"
            continue
        assert_rel_close(k(**x), want, 1e-4, f"{target}\n{text}")


@settings(max_examples=max(1, EXAMPLES // 2), derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(sparse_case(), st.sampled_from(["nan", "inf", "-inf", "huge", "tiny"]), st.sampled_from(["Q", "K", "V"]),
       st.integers(0, 10 ** 6))
def test_random_sparse_cascades_with_ieee_inputs(case, special, where, pos):
    """One NaN, +-inf, huge (+-3e30: gate scores overflow float32) or subnormal input element: the
    kernels agree with the float64 reference under ``tests.helpers.agree`` (NaN/inf at its places, or
    at the float32 reference's where float32 overflows)."""
    from tests.helpers import agree, reference_outputs
    text, m, n, seed = case
    g = torch.Generator().manual_seed(seed)
    x = {"Q": torch.randn(1, 2, m, 16, generator=g), "K": torch.randn(1, 2, n, 16, generator=g),
         "V": torch.randn(1, 2, n, 16, generator=g)}
    flat = x[where].view(-1)
    flat[pos % flat.numel()] = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 3e30,
                                "tiny": 1e-40}[special]
    if special == "huge":
        flat[(pos * 7 + 1) % flat.numel()] = -3e30
    c = einattn.load_spec(text)
    w64, w32 = reference_outputs(c, x)["O"], reference_outputs(c, x, dtype=torch.float32)["O"]
    s32 = einattn.compile(text, target="streaming", config={"BLOCK_N": 16})(**x)
    for target, kw in (("cpu", {"config": CPU}), ("cuda", {"config": CUDA, "interpret": True})):
        try:
            k = einattn.compile(text, target=target, **kw)
        except UnsupportedError as e:
            assert "decode" not in str(e), f"{target}: {e}\n{text}"
            continue
        agree(k(**x), (w64,), (w32,), s32, f"{target} ({special} in {where})\n{text}")
