"""The peak that %peak refers to, and the useful FLOPs of one call (``count_flops``, from
``einattn.autotune.cost``, where tuning records count them too).

Example:
    >>> import einattn
    >>> spec = einattn.load_spec("causal")
    >>> count_flops(spec, dict(b=1, h=1, m=4, n=4, d=2, e=2), {"scale": 0.7})["flops"]
    80
"""
from __future__ import annotations

import time

from einattn.autotune.cost import count_flops, visible_pairs  # noqa: F401 (re-exported)

# fp32 FMA peak of the machines this project benchmarks on (2 Zen 5 cores, AVX-512; the machines
# of benchmarks/RESULTS.md), measured with a TVM kernel that keeps 24 independent zmm accumulators
# busy with FMAs: what the cores can do, not what torch.matmul reaches. Other machines: pass
# --peak GFLOPS, or --peak matmul to measure torch.matmul 2048^3 instead.
PEAK_FP32_GFLOPS = 474.0
PEAK_SOURCE = ("fp32 FMA peak of the 2 Zen 5 cores (AVX-512) of benchmarks/RESULTS.md, measured with a TVM "
               "kernel of 24 independent zmm FMA accumulators; on another machine pass --peak GFLOPS or "
               "--peak matmul")


def measure_matmul_peak(reps: int = 5) -> float:
    """GFLOP/s of torch.matmul on 2048^3 fp32, best of ``reps`` after one warm call."""
    import torch
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.matmul(a, b)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        ts.append(time.perf_counter() - t)
    return 2 * 2048 ** 3 / min(ts) / 1e9


def resolve_peak(text: str | None) -> tuple[float, str]:
    """``--peak`` text -> (GFLOP/s, where it came from): None or "" for PEAK_FP32_GFLOPS (the
    benchmark machines' fp32 FMA peak, cited by PEAK_SOURCE), "matmul" to measure torch.matmul,
    else a number."""
    if text in (None, ""):
        return PEAK_FP32_GFLOPS, PEAK_SOURCE
    if str(text).lower() == "matmul":
        return measure_matmul_peak(), "measured: torch.matmul 2048^3, best of 5"
    return float(text), "given with --peak"
