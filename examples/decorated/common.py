"""Shared by the decorated examples: check a decorated function against its float64 eager run and
time both, interleaved in one process (median of several calls)."""
from __future__ import annotations

import statistics
import sys
import time

import torch

QUICK = "--quick" in sys.argv        # small shapes (the test suite runs every example this way)


def shape(b=1, h=8, g=8, m=1024, n=1024, d=64, e=64):
    if QUICK:
        return dict(b=1, h=4, g=min(g, 4) if g < h else 4, m=37, n=53, d=16, e=16)
    return dict(b=b, h=h, g=g, m=m, n=n, d=d, e=e)


def _median_ms(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def report(att, *args):
    """Print the derived spec, the error against the function run eagerly in float64, and the
    speed of the compiled kernel against the same function run eagerly (float32)."""
    with torch.no_grad():
        out = att(*args)                           # traces, compiles, runs
        ref = att.fn(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        print(att.spec())
        reps = 3 if QUICK else 10
        eager = kernel = float("inf")
        for _ in range(2):                         # interleaved: a slow moment hits both
            eager = min(eager, _median_ms(lambda: att.fn(*args), reps))
            kernel = min(kernel, _median_ms(lambda: att(*args), reps))
    print(f"max |err| / max |ref| vs float64 eager: {err:.2e}")
    print(f"eager PyTorch {eager:.2f} ms, einattn ({att.target}) {kernel:.2f} ms: {eager / kernel:.2f}x")
    assert err < 1e-4, err
    return err, eager, kernel
