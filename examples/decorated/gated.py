"""Gated attention (Qiu et al., 2025): SDPA's output gated by sigmoid of a per-query gate."""
import torch
import torch.nn.functional as F

import einattn
from common import report, shape


@einattn.attention(target="cpu")
def attention(q, k, v, gate):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True) * torch.sigmoid(gate)


if __name__ == "__main__":
    z = shape()
    q, k, v = (torch.randn(z["b"], z["h"], x, z["d"]) for x in (z["m"], z["n"], z["n"]))
    report(attention, q, k, v, torch.randn(z["b"], z["h"], z["m"], z["e"]))
