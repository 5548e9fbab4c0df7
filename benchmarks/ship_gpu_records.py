"""Model-ranked tuning records of the zoo for the four GPU targets (the shipped
``autotune/records/gpu.jsonl``): quick effort at B=2, H=16, m=n=4096, d=e=64, float16.

    python benchmarks/ship_gpu_records.py --out autotune/records/gpu.jsonl

On a machine without those GPUs each record is ranked by ``backends/triton/model.py`` and the
winner checked in Triton's interpreter (``measured: false``); on one with the GPU it is measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

TARGETS = ("cuda:sm_80", "cuda:sm_90", "rocm:gfx90a", "rocm:gfx942")
SHAPE = dict(b=2, h=16, m=4096, n=4096, d=64, e=64)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("variants", nargs="?", default=None)
    args = ap.parse_args()
    os.environ.setdefault("EINATTN_CACHE_DIR", tempfile.mkdtemp(prefix="einattn-gpu-records-"))
    import einattn
    from einattn.autotune.database import Database
    from einattn.autotune.measure import Task
    from einattn.autotune.tuner import tune
    from einattn.backends.base import Workload
    from einattn.ir import bind_sizes
    sys.path.insert(0, os.path.dirname(__file__))
    from tune_zoo import sizes_for
    out = Database(args.out)
    for name in args.variants.split(",") if args.variants else einattn.zoo_names():
        spec = einattn.load_spec(name)
        shape = sizes_for(spec, SHAPE)
        try:
            sizes = bind_sizes(spec, {t.name: tuple(shape[i] for i in t.indices) for t in spec.inputs})
        except einattn.EinattnError as e:      # a dim the standard shape cannot give (gla_scalar's t = n)
            print(f"{name}: skipped: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        for target in TARGETS:
            t = time.perf_counter()
            try:
                rec = tune(Task(spec, target, Workload.of(sizes, "float16")), effort="quick", store=False)
            except einattn.EinattnError as e:
                print(f"{name} {target}: refused: {str(e)[:200]}", flush=True)
                continue
            out.append(rec)
            print(f"{name} {target}: {rec.winner} {rec.ms:.4g} ms (model), {rec.speedup:.2f}x the default, "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
