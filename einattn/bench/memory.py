"""``einattn bench --memory``: peak RSS growth of one call, einattn vs eager, in a fresh process each.

``measure_memory`` starts ``einattn bench ... --memory-probe IMPL`` once per
implementation; the probe (``memory_probe``) makes one warm call, resets the
high-water mark, makes a second call and prints its peak RSS growth as one JSON
line. A fresh process per implementation keeps one's allocator state and caches
out of the other's figure.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from einattn.inputs import parse_assignments

from .harness import BenchOptions, as_tuple, setup, with_backward
from .peers import make_peers
from .timing import ENV

MEMORY_N = 16384                 # default M = N of --memory
MEMORY_IMPLS = ("einattn", "eager")


def memory_shape(shape: dict, given: str | None = None) -> str:
    """The shape ``--memory`` measures at: ``given`` if set, else ``shape`` with b = h = g = 1
    and m = n = MEMORY_N."""
    if given:
        return given
    s = dict(shape, m=MEMORY_N, n=MEMORY_N)
    for k in ("b", "h", "g"):
        if k in s:
            s[k] = 1
    return ",".join(f"{k}={v}" for k, v in s.items())


def measure_memory(opts: BenchOptions, shape: dict, given: str | None = None) -> dict:
    """Run the probe for einattn and for eager, each in a fresh process; their JSON by impl."""
    text = memory_shape(shape, given)
    out = {"shape": text}
    for impl in MEMORY_IMPLS:
        argv = ["bench", opts.spec, "--target", opts.target, "--shape", text, "--dtype", opts.dtype,
                "--seed", str(opts.seed), "--memory-probe", impl]
        for item in opts.param:
            argv += ["--param", item]
        if opts.config:
            argv += ["--config", opts.config]
        if opts.threads:
            argv += ["--threads", str(opts.threads)]
        if opts.backward:
            argv += ["--backward"]
        # allocations >= 64 KiB are mmapped and unmapped on free, so RSS tracks live memory
        env = {**os.environ, **ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}
        p = subprocess.run([sys.executable, "-m", "einattn.cli", *argv], env=env, capture_output=True, text=True)
        last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        try:
            out[impl] = json.loads(last)
        except json.JSONDecodeError:
            out[impl] = {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300], "rc": p.returncode}
    return out


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_probe(opts: BenchOptions, impl: str) -> dict:
    """Run in a fresh process: one warm call of ``impl`` ("einattn" or "eager") at ``opts.shape``,
    then the peak RSS growth of a second call."""
    import resource

    import einattn
    spec, shape, overrides, dtype, x, sizes, params = setup(opts, opts.shape)
    if impl == "einattn":
        kern = einattn.compile(spec, target=opts.target,
                               config=parse_assignments(opts.config, "config", False), **overrides)
        fn = lambda: kern(**x)
    else:
        (peer,) = make_peers(["eager"], spec, x, params)
        if peer["fn"] is None:
            return {"error": peer["note"]}
        fn = peer["fn"]
    if opts.backward:               # forward + backward: the outputs are the gradients
        x = {k: v.requires_grad_() for k, v in x.items()}
        fn = with_backward(fn, x, opts.seed)
    out = fn()
    out_bytes = sum(t.numel() * t.element_size() for t in as_tuple(out))
    del out
    gc.collect()
    base = _rss_kib("VmRSS")
    try:                                # reset the high-water mark to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        how = "VmHWM after clearing it (/proc/self/clear_refs) minus VmRSS before the call"
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = "ru_maxrss after minus ru_maxrss before the call"
    t = time.perf_counter()
    out = fn()  # noqa: F841  (kept alive: the peak includes the output)
    secs = time.perf_counter() - t
    peak = _rss_kib("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    in_bytes = sum(t.numel() * t.element_size() for t in x.values())
    return {"impl": impl, "rss_growth_mib": (peak - base) / 1024, "output_mib": out_bytes / 2 ** 20,
            "inputs_mib": in_bytes / 2 ** 20, "call_s": secs, "method": how}
