"""Attention sinks (gpt-oss): a per-head logit joins the softmax as an extra column via torch.cat,
then is sliced off; einattn folds it into the running max and the denominator."""
import torch

import einattn
from common import report, shape


@einattn.attention(target="cpu")
def attention(q, k, v, sinks):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    b, h, m, n = s.shape
    s = torch.cat([s, sinks.view(1, h, 1, 1).expand(b, h, m, 1)], dim=-1)
    return torch.softmax(s, dim=-1)[..., :n] @ v


if __name__ == "__main__":
    z = shape()
    q, k, v = (torch.randn(z["b"], z["h"], x, z["d"]) for x in (z["m"], z["n"], z["n"]))
    report(attention, q, k, v, torch.randn(z["h"]))
