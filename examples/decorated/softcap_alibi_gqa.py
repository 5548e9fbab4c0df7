"""Softcap + ALiBi + causal + GQA, written the way a model writes it, compiled by decorating it."""
import math

import torch

import einattn
from common import report, shape


@einattn.attention(target="cpu")
def attention(q, k, v, slopes, cap: float = 30.0):
    r = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(r, dim=1)                 # GQA: query head h reads KV head h // r
    v = v.repeat_interleave(r, dim=1)
    s = torch.einsum("bhmd,bhnd->bhmn", q, k) / math.sqrt(q.shape[-1])
    s = cap * torch.tanh(s / cap)                     # softcap (Gemma 2)
    m, n = s.shape[-2:]
    i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
    s = s - slopes[:, None, None] * (i - j)           # ALiBi
    s = s.masked_fill(j > i, float("-inf"))           # causal
    return torch.softmax(s, dim=-1) @ v


if __name__ == "__main__":
    z = shape(g=2)
    q = torch.randn(z["b"], z["h"], z["m"], z["d"])
    k = torch.randn(z["b"], z["g"], z["n"], z["d"])
    v = torch.randn(z["b"], z["g"], z["n"], z["e"])
    slopes = torch.tensor([2 ** (-8 * (i + 1) / z["h"]) for i in range(z["h"])])
    report(attention, q, k, v, slopes)
