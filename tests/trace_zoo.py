"""The variant zoo written as plain PyTorch functions, the way users write attention (einsum, ``@``,
``F.scaled_dot_product_attention``, masks from ``arange`` or ``tril``, ``repeat_interleave`` for
GQA, ``torch.cat`` of a sink column). Each entry: (function, extra inputs maker, zoo spec name).
This module does not import einattn: ``tests/trace`` decorates these functions and checks that the
derived cascade plans like ``examples/<name>.yaml`` and matches the function run eagerly."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def causal(q, k, v):
    s = torch.einsum("bhmd,bhnd->bhmn", q, k) * q.shape[-1] ** -0.5
    m, n = s.shape[-2:]
    mask = torch.arange(n)[None, :] <= torch.arange(m)[:, None]
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


def causal_tril(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    mask = torch.tril(torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool))
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


def causal_triu(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    hidden = torch.triu(torch.ones_like(s), diagonal=1).bool()
    return torch.softmax(s.masked_fill(hidden, float("-inf")), dim=-1) @ v


def causal_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def causal_bottom_right(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    m, n = s.shape[-2:]
    i = torch.arange(m)[:, None]
    j = torch.arange(n)[None, :]
    s = torch.where(j <= i + (n - m), s, float("-inf"))
    return s.softmax(-1) @ v


def sliding_window(q, k, v, window: int = 32):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    m, n = s.shape[-2:]
    i = torch.arange(m).unsqueeze(1)
    j = torch.arange(n).unsqueeze(0)
    visible = (j <= i) & (j > i - window)
    return torch.softmax(s.masked_fill(~visible, -torch.inf), dim=-1) @ v


def prefix_lm(q, k, v, prefix: int = 16):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    m, n = s.shape[-2:]
    i = torch.arange(m)[:, None]
    j = torch.arange(n)[None, :]
    return torch.softmax(torch.where((j <= i) | (j < prefix), s, float("-inf")), dim=-1) @ v


def alibi(q, k, v, slope):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    m, n = s.shape[-2:]
    dist = torch.arange(m)[:, None] - torch.arange(n)[None, :]
    s = s - slope[:, None, None] * dist
    return torch.softmax(s.masked_fill(dist < 0, float("-inf")), dim=-1) @ v


def softcap(q, k, v, cap: float = 20.0):
    s = torch.einsum("bhmd,bhnd->bhmn", q, k) * q.shape[-1] ** -0.5
    return torch.softmax(cap * torch.tanh(s / cap), dim=-1) @ v


def bias(q, k, v, b):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=b)


def gqa(q, k, v):
    r = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(r, dim=1)
    v = v.repeat_interleave(r, dim=1)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def gqa_expand(q, k, v):
    b, g, n, d = k.shape
    r = q.shape[1] // g
    k = k[:, :, None].expand(b, g, r, n, d).reshape(b, g * r, n, d)
    v = v[:, :, None].expand(b, g, r, n, v.shape[-1]).reshape(b, g * r, n, v.shape[-1])
    return torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1) @ v


def gqa_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def sinks(q, k, v, t):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    b, h, m, n = s.shape
    col = t.view(1, h, 1, 1).expand(b, h, m, 1)
    p = torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :n]
    return p @ v


def lse(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


def sigmoid(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.sigmoid(s - math.log(k.shape[-2])) @ v


def relu(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    m, n = s.shape[-2:]
    visible = torch.arange(n)[None, :] <= torch.arange(m)[:, None]
    p = torch.where(visible, torch.relu(s), 0.0)
    count = torch.where(visible, 1.0, 0.0).sum(dim=-1, keepdim=True)
    return (p @ v) / count


def softplus(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    p = F.softplus(s * math.log(k.shape[-2]))
    return (p @ v) / p.sum(dim=-1, keepdim=True)


def gated(q, k, v, gate):
    return F.scaled_dot_product_attention(q, k, v) * torch.sigmoid(gate)


def differential(q1, k1, q2, k2, v, lam):
    a1 = torch.softmax(q1 @ k1.transpose(-1, -2) * q1.shape[-1] ** -0.5, dim=-1) @ v
    a2 = torch.softmax(q2 @ k2.transpose(-1, -2) * q2.shape[-1] ** -0.5, dim=-1) @ v
    return a1 - lam[:, None, None] * a2


def signed(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    e = torch.exp(s.abs() - s.abs().amax(dim=-1, keepdim=True))
    return (torch.sign(s) * e / e.sum(dim=-1, keepdim=True)) @ v


def centered_relu(q, k, v, eps: float = 1e-6):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    p = torch.relu(s - s.mean(dim=-1, keepdim=True))
    return (p @ v) / (p.sum(dim=-1, keepdim=True) + eps)


def _qkv(b, h, m, n, d, e, g, gen):
    r = lambda *s: torch.randn(*s, generator=gen) * 0.5   # noqa: E731
    return [r(b, h, m, d), r(b, h, n, d), r(b, h, n, e)]


def _extra(fn):
    def make(b, h, m, n, d, e, g, gen):
        return _qkv(b, h, m, n, d, e, g, gen) + [fn(b, h, m, n, d, e, g, gen)]
    return make


def _gqa(b, h, m, n, d, e, g, gen):
    r = lambda *s: torch.randn(*s, generator=gen) * 0.5   # noqa: E731
    return [r(b, h, m, d), r(b, g, n, d), r(b, g, n, e)]


def _diff(b, h, m, n, d, e, g, gen):
    r = lambda *s: torch.randn(*s, generator=gen) * 0.5   # noqa: E731
    return [r(b, h, m, d), r(b, h, n, d), r(b, h, m, d), r(b, h, n, d), r(b, h, n, e), r(h)]


# name -> (function, inputs(b, h, m, n, d, e, g, generator), the zoo spec it writes)
PLAIN = {
    "softmax": (softmax, _qkv, "softmax"),
    "sdpa": (sdpa, _qkv, "softmax"),
    "causal": (causal, _qkv, "causal"),
    "causal_sdpa": (causal_sdpa, _qkv, "causal"),
    "causal_tril": (causal_tril, _qkv, "causal"),
    "causal_triu": (causal_triu, _qkv, "causal"),
    "causal_bottom_right": (causal_bottom_right, _qkv, "causal_bottom_right"),
    "sliding_window": (sliding_window, _qkv, "sliding_window"),
    "prefix_lm": (prefix_lm, _qkv, "prefix_lm"),
    "alibi": (alibi, _extra(lambda b, h, m, n, d, e, g, gen: torch.rand(h, generator=gen)), "alibi"),
    "softcap": (softcap, _qkv, "softcap"),
    "bias": (bias, _extra(lambda b, h, m, n, d, e, g, gen: torch.randn(h, m, n, generator=gen)), "bias"),
    "gqa": (gqa, _gqa, "gqa"),
    "gqa_expand": (gqa_expand, _gqa, "gqa"),
    "gqa_sdpa": (gqa_sdpa, _gqa, "gqa"),
    "sinks": (sinks, _extra(lambda b, h, m, n, d, e, g, gen: torch.randn(h, generator=gen) + 2), "sinks"),
    "lse": (lse, _qkv, "lse"),
    "sigmoid": (sigmoid, _qkv, "sigmoid"),
    "relu": (relu, _qkv, "relu"),
    "softplus": (softplus, _qkv, "softplus"),
    "gated": (gated, _extra(lambda b, h, m, n, d, e, g, gen: torch.randn(b, h, m, e, generator=gen)), "gated"),
    "differential": (differential, _diff, "differential"),
    "signed": (signed, _qkv, "signed"),
    "centered_relu": (centered_relu, _qkv, "centered_relu"),
}
