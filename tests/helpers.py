"""Small helpers shared by the test modules (inputs, comparisons, spec text)."""
from __future__ import annotations

import torch

from tests.zoo import ZOO, sizes

ZOO_NAMES = list(ZOO)


def zoo_inputs(name: str, seed: int = 0, dtype=torch.float64, **size_overrides) -> dict[str, torch.Tensor]:
    """The zoo variant's inputs (``tests.zoo`` generator) at ``sizes(**size_overrides)``, cast to dtype."""
    x = ZOO[name].make_inputs(sizes(**size_overrides), torch.Generator().manual_seed(seed))
    return {k: v.to(dtype) for k, v in x.items()}


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def assert_rel_close(got, want, rel: float, what: str = "") -> None:
    """max |got - want| <= rel * max |want| (both finite where want is finite), per output."""
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want), what
    for j, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{what} output {j}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert not torch.isnan(g).any(), f"{what} output {j} has NaN"
        g, w = g.double(), w.double()
        scale = max(w.abs().max().item(), 1e-300)
        err = (g - w).abs().max().item()
        assert err <= rel * scale, f"{what} output {j}: max abs error {err:.3e} > {rel:g} * {scale:.3e}"


def reference_outputs(cascade, inputs: dict, overrides: dict | None = None,
                      dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Run the reference executor on any cascade (original or rewritten), in float64 unless told."""
    from einattn.backends.torch.reference import run_reference
    from einattn.ir import bind_sizes, eval_params
    sz = bind_sizes(cascade, {k: tuple(v.shape) for k, v in inputs.items()})
    params = eval_params(cascade, sz, overrides)
    return run_reference(cascade, {k: v.to(dtype) for k, v in inputs.items()}, sz, params, dtype)


def nonfinite_places(t: torch.Tensor) -> tuple:
    return t.isnan(), t == float("inf"), t == -float("inf")


def ieee_mismatch(got, want, rel: float) -> str | None:
    """Why ``got`` differs from ``want`` under docs/spec.md's rules (NaN and +-inf at the same
    places, finite values within ``rel`` of the largest finite |want|), or None."""
    g, w = got.double().cpu(), want.double().cpu()
    for what, a, b in zip(("NaN", "+inf", "-inf"), nonfinite_places(g), nonfinite_places(w)):
        if not torch.equal(a, b):
            return f"{what} at {int(a.sum())} places, reference {int(b.sum())}"
    f = torch.isfinite(w)
    if f.any():
        err = float((g[f] - w[f]).abs().max() / w[f].abs().max().clamp_min(1e-30))
        if err > rel:
            return f"rel error {err:.2e} > {rel:g}"
    return None


def agree(got, want64, want32, stream32, what: str) -> None:
    """The random-cascade criterion: NaN/inf at the places of the float64 reference, or of the
    float32 one where the cascade overflows float32's range; finite values within
    ``max(1e-4, 8 x the streaming executor's float32 error)`` of the largest finite |reference|."""
    for g, w, w32, s32 in zip(as_tuple(got), want64, want32, as_tuple(stream32)):
        g = g.double().cpu()
        ok64 = all(torch.equal(a, b) for a, b in zip(nonfinite_places(g), nonfinite_places(w)))
        ok32 = all(torch.equal(a, b) for a, b in zip(nonfinite_places(g), nonfinite_places(w32.double())))
        assert ok64 or ok32, (f"{what}: NaN/inf places differ: got {int(g.isnan().sum())} NaN "
                              f"{int(g.isinf().sum())} inf, reference {int(w.isnan().sum())} NaN "
                              f"{int(w.isinf().sum())} inf")
        f = torch.isfinite(w) & torch.isfinite(g) & torch.isfinite(s32.double())
        if not f.any():
            continue
        scale = w[f].abs().max().clamp_min(1e-30)
        base = float((s32.double()[f] - w[f]).abs().max() / scale)
        err = float((g[f] - w[f]).abs().max() / scale)
        assert err <= max(1e-4, 8 * base), f"{what}: rel error {err:.2e} (streaming fp32: {base:.2e})"


def random_inputs(cascade, sizes_by_index: dict[str, int], gen: torch.Generator | None = None,
                  dtype=torch.float64) -> dict[str, torch.Tensor]:
    """randn * 0.5 inputs for a cascade, one size per index name."""
    gen = gen or torch.Generator().manual_seed(0)
    return {t.name: torch.randn([sizes_by_index[i] for i in t.indices], generator=gen, dtype=dtype) * 0.5
            for t in cascade.inputs}


# the inputs of Q/K/V specs, shared by the spec texts of the tests
QKV_INPUTS = """\
inputs:
  Q: [b, h, m, d]
  K: [b, h, n, d]
  V: [b, h, n, e]
"""

# A small, valid spec (softmax) used as the base of error and IR tests; line numbers matter.
SOFTMAX = """\
einattn: 1
name: softmax
doc: Scaled dot-product attention.
""" + QKV_INPUTS + """\
params:
  scale: 1 / sqrt(d)
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale
  - M[b,h,m] max= S[b,h,m,n]
  - P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])
  - L[b,h,m] = P[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
outputs: [O]
"""
