"""The cache-hit path in a new process: import, compile(tune="quick"), first call, when the
tuning database holds the record and the kernel cache holds the build.

    python benchmarks/cache_hit.py softmax --shape b=1,h=8,m=16,n=8192,d=64,e=64

The first process tunes on a miss (or finds a shipped record) and builds the kernel into a
fresh EINATTN_CACHE_DIR; then runs fresh processes that time
(a) ``import einattn`` and (b) compile + first call with ``tune="quick"`` (a database hit),
and, for comparison, (c) compile + first call of the same config pinned with ``tune="none"``
(no lookup). (b) - (c) is what the lookup costs. Medians of 5 processes each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch, einattn
t1 = time.perf_counter()
job = json.loads(sys.argv[1])
spec = einattn.load_spec(job["spec"])
x = {t.name: torch.randn([job["shape"][i] for i in t.indices]) for t in spec.inputs}
t2 = time.perf_counter()
if job["tune"] == "none":
    k = einattn.compile(spec, target="cpu", config=job["config"])
else:
    k = einattn.compile(spec, target="cpu", tune="quick")
k(**x)
t3 = time.perf_counter()
cfg = list(k.tuned_configs().values())[0] if job["tune"] != "none" else job["config"]
print(json.dumps({"import_s": t1 - t0, "compile_first_call_s": t3 - t2, "config": cfg}))
"""


def child(job: dict, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--shape", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    shape = {k: int(v) for k, v in (p.split("=") for p in args.shape.split(","))}
    env = dict(os.environ, EINATTN_CACHE_DIR=os.environ.get("EINATTN_CACHE_DIR") or tempfile.mkdtemp())
    os.environ.update(env)
    first = child({"spec": args.spec, "shape": shape, "tune": "quick"}, env)      # tunes on a miss
    winner = first["config"]
    print(f"first process (a tune on a miss, or a hit in the shipped records; builds the kernel): "
          f"{first['compile_first_call_s']:.1f} s; config {winner}")
    rows = {"tune=quick (hit)": [], "tune=none, same config": []}
    for _ in range(args.runs):
        rows["tune=quick (hit)"].append(child({"spec": args.spec, "shape": shape, "tune": "quick"}, env))
        rows["tune=none, same config"].append(child({"spec": args.spec, "shape": shape, "tune": "none",
                                                     "config": winner}, env))
    med = {k: (statistics.median(r["import_s"] for r in v), statistics.median(r["compile_first_call_s"] for r in v))
           for k, v in rows.items()}
    for k, (imp, call) in med.items():
        print(f"{k:26s} import {imp * 1e3:7.1f} ms   compile + first call {call * 1e3:7.1f} ms")
    hit, pinned = med["tune=quick (hit)"][1], med["tune=none, same config"][1]
    print(f"the lookup costs {1e3 * (hit - pinned):.1f} ms (median of {args.runs} processes each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
