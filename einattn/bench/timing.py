"""Interleaved timing of several implementations, and how much their thread pools spin.

All implementations run in one process, round-robin (rep 1: einattn, sdpa, flex,
eager; rep 2: ...), so a slow phase of a shared machine hits them alike. The
garbage collector is off while timing, so a collection never lands in one
implementation's call.

PyTorch's OpenMP pool and TVM's pool both busy-wait after a call by default and
steal each other's cores when interleaved: ``ENV`` is the environment that makes
both sleep. libgomp reads it once, when torch is imported, so it must be set
before the process starts (``einattn bench`` re-runs itself when it is not).
"""
from __future__ import annotations

import gc
import time

ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TVM_THREAD_POOL_SPIN_COUNT": "0"}


def time_round_robin(impls: list[dict], warmup: int, reps: int) -> None:
    """Call every implementation ``warmup`` times, then ``reps`` times in turn, timing each call.

    Fills ``first_call_s``, ``times_ms`` and ``out`` (the last output) in each entry; an
    implementation that raises on its first call gets ``fn = None`` and the error as its note.
    """
    for rnd in range(max(warmup, 1)):
        for im in impls:
            if im["fn"] is None:
                continue
            t = time.perf_counter()
            try:
                im["out"] = im["fn"]()
            except Exception as e:
                if rnd:
                    raise
                im["fn"], im["note"] = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            if rnd == 0:
                im["first_call_s"] = time.perf_counter() - t
    live = [im for im in impls if im["fn"] is not None]
    for im in live:
        im["times_ms"] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            for im in live:
                t = time.perf_counter()
                im["out"] = im["fn"]()
                im["times_ms"].append((time.perf_counter() - t) * 1e3)
    finally:
        gc.enable()


def spin_after_call(fn, sleeps: int = 3, secs: float = 0.02) -> float:
    """Milliseconds of CPU the process burns while it sleeps ``secs`` after a call of ``fn``
    (mean of ``sleeps``): ~0 when the thread pools sleep, several ms when they busy-wait."""
    import resource

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    used = 0.0
    for _ in range(sleeps):
        fn()
        c = cpu()
        time.sleep(secs)
        used += cpu() - c
    return 1e3 * used / sleeps
