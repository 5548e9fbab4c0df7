"""Sigmoid attention (Ramapuram et al., 2024): sigmoid(s + b) with b = -log(n), no normaliser."""
import torch

import einattn
from common import report, shape


@einattn.attention(target="cpu")
def attention(q, k, v):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.sigmoid(s - torch.log(torch.tensor(float(k.shape[-2])))) @ v


if __name__ == "__main__":
    z = shape()
    q, k, v = (torch.randn(z["b"], z["h"], x, z["d"]) for x in (z["m"], z["n"], z["n"]))
    report(attention, q, k, v)
