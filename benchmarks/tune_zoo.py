"""Tune the zoo on the CPU and measure what tuning buys, in one process.

For each variant and shape: a quick tune into a fresh database (its wall time), then the
default and the tuned kernel called alternately (medians, and the median of the per-pair
ratios default / tuned). ``--records FILE`` also appends each record to FILE (the records
shipped in ``autotune/records/``). A ``torch.matmul`` probe is printed first and last.

    python benchmarks/tune_zoo.py --shapes 2048,decode --records autotune/records/cpu.jsonl
    python benchmarks/tune_zoo.py softmax,causal --shapes 8192 --effort full

Shapes: N (B=1, H=8, m=n=N, d=e=64) or ``decode`` (B=1, H=8, m=16, n=8192) or
``decode1`` (B=1, H=1, m=16, n=8192: one (batch, head) program, where only KV_SPLITS uses both cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def shape_of(name: str) -> dict:
    if name == "decode":
        return dict(b=1, h=8, m=16, n=8192, d=64, e=64)
    if name == "decode1":
        return dict(b=1, h=1, m=16, n=8192, d=64, e=64)
    n = int(name)
    return dict(b=1, h=8, m=n, n=n, d=64, e=64)


def probe() -> float:
    """The machine's speed beside each table: torch.matmul 2048^3 fp32, best of 5."""
    from einattn.bench.flops import measure_matmul_peak
    return measure_matmul_peak()


def sizes_for(spec, shape: dict) -> dict:
    """The spec's input dims from the standard shape (g, the KV heads of gqa: h / 4, at least 1; other dims: d)."""
    dims = list(dict.fromkeys(i for t in spec.inputs for i in t.indices))
    out = {}
    for i in dims:
        out[i] = shape.get(i, max(1, shape["h"] // 4) if i == "g" else shape["d"])
    return out


def interleaved(fns: list, rounds: int) -> list[list[float]]:
    out = [[] for _ in fns]
    for f in fns:
        f()
    for r in range(rounds):
        order = list(enumerate(fns))
        for k, f in (order if r % 2 == 0 else order[::-1]):      # no kernel always goes first
            t = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="?", default=None, help="comma-separated zoo names (default: the zoo)")
    ap.add_argument("--shapes", default="512,2048,decode")
    ap.add_argument("--effort", default="quick", choices=("quick", "full"))
    ap.add_argument("--records", default=None, help="append each record to this .jsonl (shipped records)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("EINATTN_CACHE_DIR", tempfile.mkdtemp(prefix="einattn-tune-zoo-"))
    import einattn
    from einattn.autotune.database import Database
    from einattn.autotune.measure import Task
    from einattn.autotune.tuner import tune
    from einattn.backends.base import Workload
    from einattn.backends.torch.check import random_inputs
    from einattn.ir import bind_sizes
    names = args.variants.split(",") if args.variants else einattn.zoo_names()
    print(f"probe: torch.matmul 2048^3 fp32 {probe():.0f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    print("| variant | shape | default ms | tuned ms | default/tuned (paired median) | tuned config | "
          f"{args.effort} tune s | candidates |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        spec = einattn.load_spec(name)
        for sh in args.shapes.split(","):
            shape = sizes_for(spec, shape_of(sh))
            sizes = bind_sizes(spec, {t.name: tuple(shape[i] for i in t.indices) for t in spec.inputs})
            task = Task(spec, "cpu", Workload.of(sizes))
            db = Database(Path(os.environ["EINATTN_CACHE_DIR"]) / f"{name}-{sh}-{args.effort}.jsonl")
            try:
                rec = tune(task, effort=args.effort, db=db)
            except einattn.EinattnError as e:
                print(f"| {name} | {sh} | refused: {str(e)[:100]} |||||||", flush=True)
                continue
            if args.records:
                Database(args.records).append(rec)
            x = random_inputs(spec, sizes, torch.float32)
            kd = einattn.compile(spec, target="cpu", config=rec.default)
            kt = einattn.compile(spec, target="cpu", config=rec.winner)
            td, tt = interleaved([lambda: kd(**x), lambda: kt(**x)], args.rounds)
            ratio = statistics.median(a / b for a, b in zip(td, tt))
            cfg = ",".join(f"{k}={v}" for k, v in rec.winner.items() if rec.default.get(k) != v) or "(default)"
            row = dict(variant=name, shape=sh, default_ms=statistics.median(td) * 1e3,
                       tuned_ms=statistics.median(tt) * 1e3, ratio=ratio, config=cfg, tune_s=rec.wall_s,
                       candidates=len(rec.candidates))
            rows.append(row)
            print(f"| {name} | {sh} | {row['default_ms']:.3f} | {row['tuned_ms']:.3f} | {ratio:.2f} | {cfg} | "
                  f"{rec.wall_s:.1f} | {len(rec.candidates)} |", flush=True)
    print(f"probe: torch.matmul 2048^3 fp32 {probe():.0f} GFLOP/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
