"""Hand-written float64 PyTorch oracles for the variant zoo.

This module does not import einattn. It is the independent ground truth that
einattn's own reference executor is checked against, so every function here is
written the plain way (explicit index masks, ``softmax`` then explicit zeroing of
rows with no visible key) rather than the way the compiler would write it.

Each entry mirrors ``examples/<name>.yaml``: ``make_inputs`` returns the spec's
inputs in declaration order, and ``torch_ref`` returns the spec's ``outputs`` in
order (a tuple when there are several). A parameter present in ``params``
overrides the spec's default; an absent one is computed from the input shapes
exactly as the spec's ``params:`` expression would.

Example:
    >>> from tests.zoo import ZOO, sizes
    >>> import torch
    >>> v = ZOO["causal"]
    >>> x = v.make_inputs(sizes(), torch.Generator().manual_seed(0))
    >>> v.torch_ref(x, v.params).shape
    torch.Size([2, 4, 77, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor
Sizes = dict[str, int]
Inputs = dict[str, Tensor]
Params = dict[str, float]

DEFAULT_SIZES: Sizes = {"b": 2, "h": 4, "m": 77, "n": 131, "d": 16, "e": 16, "g": 2}


@dataclass(frozen=True)
class Variant:
    """One zoo entry: an input generator and a float64 oracle for its spec.

    Attributes:
        name: the spec name, equal to ``examples/<name>.yaml``'s stem.
        make_inputs: ``(sizes, generator) -> {input name: float32 tensor}`` in the
            spec's declaration order.
        torch_ref: ``(inputs, params) -> output`` in float64; a tuple when the
            spec has several outputs.
        params: the spec's shape-independent numeric defaults (``W: 32``,
            ``c: 20.0``...). Shape-dependent defaults (``scale``, ``beta``...) are
            not listed; ``torch_ref`` derives them from the inputs when absent.
    """

    name: str
    make_inputs: Callable[[Sizes, torch.Generator], Inputs]
    torch_ref: Callable[..., Tensor | tuple[Tensor, ...]]
    params: dict = field(default_factory=dict)


def sizes(**overrides: int) -> Sizes:
    """Default sizes (M != N, neither a multiple of a block size), with overrides."""
    unknown = set(overrides) - set(DEFAULT_SIZES)
    if unknown:
        raise KeyError(f"unknown size names {sorted(unknown)}; expected some of {sorted(DEFAULT_SIZES)}")
    return {**DEFAULT_SIZES, **overrides}


# ---------------------------------------------------------------------------
# Input generators


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32) * 0.5


def _qkv(sz: Sizes, gen: torch.Generator) -> Inputs:
    b, h, m, n, d, e = (sz[k] for k in "bhmnde")
    return {"Q": _randn(gen, b, h, m, d), "K": _randn(gen, b, h, n, d), "V": _randn(gen, b, h, n, e)}


def _qkv_plus(**extra: Callable[[Sizes, torch.Generator], Tensor]):
    """Generator for Q, K, V followed by extra inputs, in that order."""

    def make(sz: Sizes, gen: torch.Generator) -> Inputs:
        inputs = _qkv(sz, gen)
        for name, make_one in extra.items():
            inputs[name] = make_one(sz, gen)
        return inputs

    return make


def _alibi_slopes(sz: Sizes, gen: torch.Generator) -> Tensor:
    # The standard ALiBi geometric sequence 2^(-8 (i + 1) / H); deterministic.
    h = sz["h"]
    return torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float32)


def _sink_logits(sz: Sizes, gen: torch.Generator) -> Tensor:
    # Shifted by log N so the sink takes about half of the denominator; with
    # plain randn * 0.5 it would carry ~1% of the mass and be hard to see in tests.
    return _randn(gen, sz["h"]) + math.log(sz["n"])


def _make_gqa(sz: Sizes, gen: torch.Generator) -> Inputs:
    b, h, g, m, n, d, e = (sz[k] for k in "bhgmnde")
    if h % g:
        raise ValueError(f"gqa needs h divisible by g, got h={h}, g={g}")
    return {"Q": _randn(gen, b, h, m, d), "K": _randn(gen, b, g, n, d), "V": _randn(gen, b, g, n, e)}


def _make_differential(sz: Sizes, gen: torch.Generator) -> Inputs:
    b, h, m, n, d, e = (sz[k] for k in "bhmnde")
    return {
        "Q1": _randn(gen, b, h, m, d),
        "K1": _randn(gen, b, h, n, d),
        "Q2": _randn(gen, b, h, m, d),
        "K2": _randn(gen, b, h, n, d),
        "V": _randn(gen, b, h, n, e),
        "lam": _randn(gen, h),
    }


# ---------------------------------------------------------------------------
# Shared pieces of the oracles


def _param(params: Params | None, name: str, default: float) -> float:
    return params[name] if params and name in params else default


def _scores(q: Tensor, k: Tensor, params: Params | None) -> Tensor:
    """s[b,h,m,n] = scale * sum_d q k, scale = 1/sqrt(D) unless overridden."""
    scale = _param(params, "scale", 1.0 / math.sqrt(q.shape[-1]))
    return scale * torch.einsum("bhmd,bhnd->bhmn", q.double(), k.double())


def _positions(s: Tensor) -> tuple[Tensor, Tensor]:
    """Query and key coordinates, shaped [M, 1] and [1, N] to broadcast to [M, N]."""
    m, n = s.shape[-2:]
    return torch.arange(m)[:, None], torch.arange(n)[None, :]


def _attend(s: Tensor, v: Tensor, visible: Tensor | None = None) -> Tensor:
    """sum_n softmax_n(s) v over visible keys; a row with no visible key gives 0."""
    if visible is not None:
        s = s.masked_fill(~visible, -math.inf)
    p = torch.softmax(s, dim=-1)
    if visible is not None:
        # softmax of an all -inf row is NaN; the spec convention makes it 0.
        p = p.masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)
    return p @ v.double()


# ---------------------------------------------------------------------------
# Oracles, one per spec


def softmax(x: Inputs, params: Params | None = None) -> Tensor:
    return _attend(_scores(x["Q"], x["K"], params), x["V"])


def causal(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    m, n = _positions(s)
    return _attend(s, x["V"], n <= m)


def causal_bottom_right(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    m, n = _positions(s)
    off = _param(params, "off", s.shape[-1] - s.shape[-2])
    return _attend(s, x["V"], n <= m + off)


def sliding_window(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    m, n = _positions(s)
    w = _param(params, "W", 32)
    return _attend(s, x["V"], (n <= m) & (n > m - w))


def prefix_lm(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    m, n = _positions(s)
    p = _param(params, "P", 16)
    return _attend(s, x["V"], (n <= m) | (n < p))


def alibi(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    m, n = _positions(s)
    slope = x["slope"].double()[:, None, None]  # [H, 1, 1] against s[B, H, M, N]
    return _attend(s - slope * (m - n), x["V"], n <= m)


def softcap(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    c = _param(params, "c", 20.0)
    return _attend(c * torch.tanh(s / c), x["V"])


def bias(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    return _attend(s + x["B"].double(), x["V"])


def gqa(x: Inputs, params: Params | None = None) -> Tensor:
    h, g = x["Q"].shape[1], x["K"].shape[1]
    r = int(_param(params, "r", h // g))
    kv_head = torch.arange(h) // r  # query head h reads KV head h // r
    k, v = x["K"][:, kv_head], x["V"][:, kv_head]
    return _attend(_scores(x["Q"], k, params), v)


def sinks(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    b, h, m, n = s.shape
    # The sink is one extra logit per row that takes probability mass but has no value.
    sink = x["t"].double().view(1, h, 1, 1).expand(b, h, m, 1)
    p = torch.softmax(torch.cat([s, sink], dim=-1), dim=-1)[..., :n]
    return p @ x["V"].double()


def lse(x: Inputs, params: Params | None = None) -> tuple[Tensor, Tensor]:
    s = _scores(x["Q"], x["K"], params)
    return _attend(s, x["V"]), torch.logsumexp(s, dim=-1)


def sigmoid(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    beta = _param(params, "beta", -math.log(s.shape[-1]))
    return torch.sigmoid(s + beta) @ x["V"].double()


def relu(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    m, n = _positions(s)
    visible = n <= m
    p = torch.relu(s).masked_fill(~visible, 0.0)
    count = visible.sum(dim=-1, keepdim=True).double()  # [M, 1]
    # A row with no visible key has p == 0, so dividing by max(count, 1) gives 0 = 0/0.
    return (p @ x["V"].double()) / count.clamp(min=1.0)


def softplus(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    ln_n = _param(params, "ln_n", math.log(s.shape[-1]))
    # log(1 + e^z) exactly; F.softplus switches to the identity above a threshold.
    p = torch.logaddexp(s * ln_n, torch.zeros_like(s))
    return (p @ x["V"].double()) / p.sum(dim=-1, keepdim=True)


def gated(x: Inputs, params: Params | None = None) -> Tensor:
    a = _attend(_scores(x["Q"], x["K"], params), x["V"])
    return a * torch.sigmoid(x["G"].double())


def differential(x: Inputs, params: Params | None = None) -> Tensor:
    o1 = _attend(_scores(x["Q1"], x["K1"], params), x["V"])
    o2 = _attend(_scores(x["Q2"], x["K2"], params), x["V"])
    lam = x["lam"].double()[:, None, None]  # [H, 1, 1] against o[B, H, M, E]
    return o1 - lam * o2


def signed(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    e = torch.exp(s.abs() - s.abs().amax(dim=-1, keepdim=True))
    w = torch.sign(s) * e / e.sum(dim=-1, keepdim=True)
    return w @ x["V"].double()


def centered_relu(x: Inputs, params: Params | None = None) -> Tensor:
    s = _scores(x["Q"], x["K"], params)
    inv_n = _param(params, "inv_n", 1.0 / s.shape[-1])
    eps = _param(params, "eps", 1e-6)
    mean = s.sum(dim=-1, keepdim=True) * inv_n
    p = torch.relu(s - mean)
    return (p @ x["V"].double()) / (p.sum(dim=-1, keepdim=True) + eps)


# ---------------------------------------------------------------------------
# Linear attention (examples/linear_elu.yaml ... efficient.yaml): the quadratic form, with the
# decay matrix built from powers and explicit masks (the scan einattn derives is not used here)


def _square(sz: Sizes) -> Sizes:
    """Causal linear variants compare positions: as many queries as keys (m = n)."""
    return {**sz, "m": sz["n"]}


def _qkv_square(sz: Sizes, gen: torch.Generator) -> Inputs:
    return _qkv(_square(sz), gen)


def _log_gates(sz: Sizes, gen: torch.Generator) -> Tensor:
    # cumulative sums of per-step log-gates log(sigmoid(x + 2)) < 0: gates near 0.9
    b, h, n = sz["b"], sz["h"], sz["n"]
    steps = torch.nn.functional.logsigmoid(torch.randn(b, h, n, generator=gen) + 2.0)
    return torch.cumsum(steps, dim=-1).float()


def _decayed(q: Tensor, k: Tensor, v: Tensor, logw: Tensor, scale: float) -> Tensor:
    """sum_{n<=m} exp(logw[.., m, n]) (scale q.k) v."""
    s = scale * q.double() @ k.double().transpose(-1, -2)
    mi, ni = _positions(s)
    w = torch.where(ni <= mi, torch.exp(torch.where(ni <= mi, logw, 0.0)), 0.0)
    return (s * w) @ v.double()


def linear_elu(x: Inputs, params: Params | None = None) -> Tensor:
    phi = lambda t: torch.nn.functional.elu(t.double()) + 1.0
    s = phi(x["Q"]) @ phi(x["K"]).transpose(-1, -2)
    mi, ni = _positions(s)
    s = s.masked_fill(ni > mi, 0.0)
    return (s @ x["V"].double()) / s.sum(-1, keepdim=True)


def retention(x: Inputs, params: Params | None = None) -> Tensor:
    h = x["Q"].shape[1]
    gamma = torch.tensor([1.0 - 2.0 ** (-5.0 - i) for i in range(h)], dtype=torch.float64)
    m, n = x["Q"].shape[2], x["K"].shape[2]
    dist = (torch.arange(m)[:, None] - torch.arange(n)[None, :]).double()
    logw = dist * torch.log(gamma)[:, None, None]
    return _decayed(x["Q"], x["K"], x["V"], logw, _param(params, "scale", 1.0 / math.sqrt(x["Q"].shape[-1])))


def lightning(x: Inputs, params: Params | None = None) -> Tensor:
    h = x["Q"].shape[1]
    slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=torch.float64)
    m, n = x["Q"].shape[2], x["K"].shape[2]
    dist = (torch.arange(m)[:, None] - torch.arange(n)[None, :]).double()
    return _decayed(x["Q"], x["K"], x["V"], -slopes[:, None, None] * dist, 1.0)


def gla_scalar(x: Inputs, params: Params | None = None) -> Tensor:
    g = x["G"].double()
    logw = g[..., :, None] - g[..., None, :]
    return _decayed(x["Q"], x["K"], x["V"], logw, _param(params, "scale", 1.0 / math.sqrt(x["Q"].shape[-1])))


def efficient(x: Inputs, params: Params | None = None) -> Tensor:
    rq = torch.softmax(x["Q"].double(), dim=-1)           # each query over its channels
    rk = torch.softmax(x["K"].double(), dim=-2)           # each key channel over the positions
    return rq @ (rk.transpose(-1, -2) @ x["V"].double())


# ---------------------------------------------------------------------------
# The table

ZOO: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("softmax", _qkv, softmax),
        Variant("causal", _qkv, causal),
        Variant("causal_bottom_right", _qkv, causal_bottom_right),
        Variant("sliding_window", _qkv, sliding_window, {"W": 32}),
        Variant("prefix_lm", _qkv, prefix_lm, {"P": 16}),
        Variant("alibi", _qkv_plus(slope=_alibi_slopes), alibi),
        Variant("softcap", _qkv, softcap, {"c": 20.0}),
        Variant("bias", _qkv_plus(B=lambda sz, gen: _randn(gen, sz["h"], sz["m"], sz["n"])), bias),
        Variant("gqa", _make_gqa, gqa),
        Variant("sinks", _qkv_plus(t=_sink_logits), sinks),
        Variant("lse", _qkv, lse),
        Variant("sigmoid", _qkv, sigmoid),
        Variant("relu", _qkv, relu),
        Variant("softplus", _qkv, softplus),
        Variant("gated", _qkv_plus(G=lambda sz, gen: _randn(gen, sz["b"], sz["h"], sz["m"], sz["e"])), gated),
        Variant("differential", _make_differential, differential),
        Variant("signed", _qkv, signed),
        Variant("centered_relu", _qkv, centered_relu, {"eps": 1e-6}),
    ]
}

# linear attention: each one reassociates into a scan (compiler/linear.py); causal ones take m = n
LINEAR_ZOO: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("linear_elu", _qkv_square, linear_elu),
        Variant("retention", _qkv_square, retention),
        Variant("lightning", _qkv_square, lightning),
        Variant("gla_scalar", lambda sz, gen: {**_qkv_square(sz, gen), "G": _log_gates(sz, gen)}, gla_scalar),
        Variant("efficient", _qkv, efficient),
    ]
}


# ---------------------------------------------------------------------------
# Block-sparse attention (spec v1.1): each oracle builds the selection densely and applies it as
# a mask over one softmax, the plain way (the specs write MoBA as an LSE merge of two branches)


def _keep_topk(score: Tensor, k: int) -> Tensor:
    """Boolean [.., J]: rank r(j) = #{i: s_i > s_j} + #{i < j: s_i == s_j}; keep r < k or s = +inf,
    never NaN or -inf."""
    s = torch.nan_to_num(score.double(), nan=-math.inf, posinf=math.inf)
    a, b = s[..., :, None], s[..., None, :]                 # [.., j, i]
    j = torch.arange(s.shape[-1])
    rank = ((b > a) | ((b == a) & (j[None, :] < j[:, None]))).sum(-1)
    return ((rank < k) & (s > -math.inf)) | (s == math.inf)


def _keep_topp(score: Tensor, p: float) -> Tensor:
    s = torch.nan_to_num(score.double(), nan=-math.inf, posinf=math.inf)
    finite = torch.isfinite(s)
    w = torch.softmax(torch.where(finite, s, torch.full_like(s, -math.inf)), dim=-1).nan_to_num(0.0)
    a, b = s[..., :, None], s[..., None, :]
    j = torch.arange(s.shape[-1])
    above = (b > a) | ((b == a) & (j[None, :] < j[:, None]))    # i ranked above j
    before = (above.double() * w[..., None, :]).sum(-1)
    return (finite & (before < p)) | (s == math.inf)


def _block_means(k: Tensor, starts: list[int], length: int) -> Tensor:
    """[.., len(starts), D]: mean of rows start .. start + length - 1 (cut at the end) of k."""
    n = k.shape[-2]
    return torch.stack([k[..., s:min(s + length, n), :].mean(-2) for s in starts], dim=-2)


def _pooled_gate(x: Inputs, params: Params | None, bs: int, scaled: bool) -> tuple[Tensor, Tensor]:
    """MoBA's gate: (score [B,H,M,NB] with the own block +inf and later blocks -inf, key block ids)."""
    q, k = x["Q"].double(), x["K"].double()
    m, n = q.shape[-2], k.shape[-2]
    nb = -(-n // bs)
    kb = _block_means(k, [j * bs for j in range(nb)], bs)
    g = q @ kb.transpose(-1, -2)
    if scaled:
        g = g * _param(params, "scale", 1.0 / math.sqrt(q.shape[-1]))
    own = torch.arange(m)[:, None] // bs
    j = torch.arange(nb)[None, :]
    score = torch.where(j == own, math.inf, torch.where(j < own, g, -math.inf))
    return score, torch.arange(n) // bs


def moba(x: Inputs, params: Params | None = None) -> Tensor:
    bs = int(_param(params, "BS", 64))
    score, blk = _pooled_gate(x, params, bs, scaled=False)
    keep = _keep_topk(score, int(_param(params, "k", 3)))
    s = _scores(x["Q"], x["K"], params)
    mi, ni = _positions(s)
    return _attend(s, x["V"], keep[..., blk] & (ni <= mi))


def topp_blocks(x: Inputs, params: Params | None = None) -> Tensor:
    bs = int(_param(params, "BS", 64))
    score, blk = _pooled_gate(x, params, bs, scaled=True)
    keep = _keep_topp(score, _param(params, "p", 0.9))
    s = _scores(x["Q"], x["K"], params)
    mi, ni = _positions(s)
    return _attend(s, x["V"], keep[..., blk] & (ni <= mi))


def power(x: Inputs, params: Params | None = None) -> Tensor:
    bs, w = int(_param(params, "BS", 64)), int(_param(params, "W", 2))
    s = _scores(x["Q"], x["K"], params)
    mi, ni = _positions(s)
    dist = mi // bs - ni // bs
    pow2 = (dist > 0) & ((dist & (dist - 1)) == 0)
    return _attend(s, x["V"], (dist >= 0) & ((dist < w) | pow2) & (ni <= mi))


def _make_nsa(sz: Sizes, gen: torch.Generator) -> Inputs:
    x = _make_gqa(sz, gen)
    b, h, m = sz["b"], sz["h"], sz["m"]
    return {**x, **{g: torch.randn(b, h, m, generator=gen) for g in ("Gc", "Gs", "Gw")}}


def nsa(x: Inputs, params: Params | None = None) -> Tensor:
    q, k, v = x["Q"].double(), x["K"].double(), x["V"].double()
    h, g = q.shape[1], k.shape[1]
    r = h // g
    k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)      # per query head
    m, n = q.shape[-2], k.shape[-2]
    cl, cs, sb = (int(_param(params, p, d)) for p, d in (("CL", 32), ("CS", 16), ("SB", 64)))
    topk, w = int(_param(params, "k", 16)), int(_param(params, "W", 512))
    scale = _param(params, "scale", 1.0 / math.sqrt(q.shape[-1]))
    nc, nb = -(-n // cs), -(-n // sb)
    starts = [c * cs for c in range(nc)]
    kc, vc = _block_means(k, starts, cl), _block_means(v, starts, cl)
    mi = torch.arange(m)[:, None]
    seen = torch.tensor([s + cl - 1 for s in starts])[None, :] <= mi          # [M, NC]
    sc = (q @ kc.transpose(-1, -2) * scale).masked_fill(~seen, -math.inf)
    pc = torch.softmax(sc, -1).masked_fill(~seen.any(-1, keepdim=True), 0.0)
    oc = pc @ vc
    to_block = torch.zeros(nc, nb, dtype=torch.float64)
    for c, s0 in enumerate(starts):
        to_block[c, s0 // sb] = 1.0
    imp = (pc @ to_block).reshape(q.shape[0], g, r, m, nb).sum(2)            # [B, G, M, NB]
    own = mi // sb
    j = torch.arange(nb)[None, :]
    always = (j == 0) | ((j <= own) & (j >= own - 1))
    score = torch.where(always, math.inf, torch.where(j <= own, imp, -math.inf))
    keep = _keep_topk(score, topk).repeat_interleave(r, 1)                   # one selection per group
    s = q @ k.transpose(-1, -2) * scale
    ni = torch.arange(n)[None, :]
    causal = ni <= mi
    os_ = _attend(s, v, keep[..., ni[0] // sb] & causal)
    ow = _attend(s, v, causal & (ni > mi - w))
    gate = [torch.sigmoid(x[t].double())[..., None] for t in ("Gc", "Gs", "Gw")]
    return gate[0] * oc + gate[1] * os_ + gate[2] * ow


def _qkv_square_gqa(sz: Sizes, gen: torch.Generator) -> Inputs:
    return _make_nsa(_square(sz), gen)


# selection specs are causal over their own positions: m = n in the generators
SPARSE_ZOO: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("moba", _qkv_square, moba, {"BS": 64, "k": 3}),
        Variant("topp_blocks", _qkv_square, topp_blocks, {"BS": 64, "p": 0.9}),
        Variant("power", _qkv_square, power, {"BS": 64, "W": 2}),
        Variant("nsa", _qkv_square_gqa, nsa, {"CL": 32, "CS": 16, "SB": 64, "k": 16, "W": 512}),
    ]
}
