"""Random cascades (``tests/cascades.py``) in bf16 and fp16 on the CPU kernel against the float64
reference of the same rounded inputs.

On a host with AVX512_BF16 the bf16 cases run the vdpbf16ps kernel (``backends/cpu/pairs.py``:
P rounded to bf16 before the value product), elsewhere the widening one. The criterion is
``agree``'s with the dtype's tolerance (docs/dtypes.md) as its floor: NaN/inf where the
reference has them, finite values within ``max(tol, 8 x the float32 streaming error)`` of the
largest finite |reference| (or of 1e-4, where the outputs are all smaller). ``EINATTN_BF16_CASCADES`` (default 24) examples, fixed seeds;
``EINATTN_BF16_CASCADES_SEED=N`` draws a fresh sample.
"""
from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import einattn
from einattn.backends.torch.check import TOLERANCE
from einattn.ir import UnsupportedError
from tests.cascades import case
from tests.helpers import as_tuple, nonfinite_places, reference_outputs

pytest.importorskip("tvm")
pytestmark = pytest.mark.cpu

EXAMPLES = int(os.environ.get("EINATTN_BF16_CASCADES", "24"))
SEED = os.environ.get("EINATTN_BF16_CASCADES_SEED")


def check_low_precision(text: str, x: dict, dtype: torch.dtype, what: str) -> None:
    c = einattn.load_spec(text)
    x = {k: v.to(dtype) for k, v in x.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = reference_outputs(c, {k: v.double() for k, v in x.items()})
        want32 = reference_outputs(c, {k: v.float() for k, v in x.items()}, dtype=torch.float32)
    try:
        got = einattn.compile(text, target="cpu")(**x)
    except UnsupportedError as e:
        assert "internal error" not in str(e).lower() and re.match(r"<string>:\d+:\d+: ", str(e)), str(e)
        return
    for o, g in zip(c.outputs, as_tuple(got)):
        w, w32 = want[o], want32[o].double()
        g = g.double()
        places = [torch.equal(a, b) for ref in (w, w32) for a, b in zip(nonfinite_places(g), nonfinite_places(ref))]
        assert all(places[:2]) or all(places[2:]), f"{what} {o}: NaN/inf places differ\n{text}"
        f = torch.isfinite(w) & torch.isfinite(g) & torch.isfinite(w32)
        if not f.any():
            continue
        scale = w[f].abs().max().clamp_min(1e-4)     # an output of zeros (lse of one key): absolute
        base = float((w32[f] - w[f]).abs().max() / scale)
        err = float((g[f] - w[f]).abs().max() / scale)
        assert err <= max(TOLERANCE[dtype], 8 * base), f"{what} {o}: rel error {err:.2e} (fp32: {base:.2e})\n{text}"


@settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cpu_low_precision_agrees_with_the_reference(data):
    text, sizes, x, poked = data.draw(case())
    dtype = data.draw(st.sampled_from([torch.bfloat16, torch.bfloat16, torch.float16]))
    check_low_precision(text, x, dtype, f"cpu {dtype} on {sizes}, {poked}")


if SEED is not None:
    test_cpu_low_precision_agrees_with_the_reference = seed(int(SEED))(
        test_cpu_low_precision_agrees_with_the_reference)
