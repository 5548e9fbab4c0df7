"""Random inputs for a cascade and the error measure every accuracy check uses (the CLI's
``check``, the bench harness and the autotuner's per-candidate check)."""
from __future__ import annotations

import torch

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def random_inputs(cascade, sizes: dict, dtype: torch.dtype, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """randn * 0.5 for every input of the cascade at the given sizes, drawn in float64 and rounded
    to ``dtype``, so the same seed gives the same values in every dtype."""
    g = torch.Generator().manual_seed(seed)
    return {t.name: (torch.randn([sizes[i] for i in t.indices], generator=g, dtype=torch.float64) * 0.5)
            .to(dtype).to(device) for t in cascade.inputs}


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| over entries where want is finite; inf if NaN/inf appears wrongly."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if not torch.equal(torch.isfinite(got), torch.isfinite(want)):
        return float("inf")
    fin = torch.isfinite(want)
    if not fin.any():
        return 0.0
    scale = want[fin].abs().max().clamp_min(1e-30)
    return float((got[fin] - want[fin]).abs().max() / scale)
