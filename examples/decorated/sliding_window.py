"""Sliding-window causal attention (Mistral, Gemma): a mask from two arange comparisons."""
import torch

import einattn
from common import report, shape


@einattn.attention(target="cpu")
def attention(q, k, v, window: int = 256):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    m, n = s.shape[-2:]
    i = torch.arange(m).unsqueeze(1)
    j = torch.arange(n).unsqueeze(0)
    visible = (j <= i) & (j > i - window)
    return torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1) @ v


if __name__ == "__main__":
    z = shape()
    q, k, v = (torch.randn(z["b"], z["h"], x, z["d"]) for x in (z["m"], z["n"], z["n"]))
    report(attention, q, k, v, 16 if "--quick" in __import__("sys").argv else 256)
