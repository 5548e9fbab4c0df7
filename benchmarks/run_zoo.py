"""Run ``einattn bench`` for every zoo variant and print a markdown table.

Each variant runs in its own process (``python -m einattn.cli bench ... --json``),
so one variant's compile caches, thread pools and memory do not affect the
next; the table goes to stdout, each bench's full report to stderr.

Usage (from the repository root; wrap timing runs in the shared lock):
    flock /tmp/einattn-bench.lock python benchmarks/run_zoo.py --target cpu > table.md
    python benchmarks/run_zoo.py --target streaming --shape b=1,h=2,m=256,n=256,d=64,e=64 \\
        --variants softmax,causal --against eager,sdpa
    python benchmarks/run_zoo.py --target cpu --backward --variants softmax,causal   # forward + backward
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from einattn.bench.harness import DEFAULT_SHAPE
from einattn.bench.peers import PEER_KINDS as PEERS

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "benchmarks" / "specs"
# Params that differ from the spec defaults, so a variant measures the case the goals
# name: a 256-key window rather than the zoo's test-sized 32.
PARAMS = {"sliding_window": ["W=256"]}


def variants() -> list[str]:
    """Zoo names, then benchmarks/specs/*.yaml (given as paths)."""
    import einattn
    return einattn.zoo_names() + [str(p.relative_to(ROOT)) for p in sorted(SPECS.glob("*.yaml"))]


def shape_for(variant: str, shape: str) -> str:
    """GQA needs a KV-head count: g = h / 4 unless the shape gives g."""
    if not variant.endswith("gqa") or "g=" in shape:
        return shape
    h = dict(kv.split("=") for kv in shape.split(","))["h"]
    return f"{shape},g={max(1, int(h) // 4)}"


def bench_one(variant: str, args, out: Path) -> dict | None:
    cmd = [sys.executable, "-m", "einattn.cli", "bench", variant, "--target", args.target,
           "--shape", shape_for(variant, args.shape), "--dtype", args.dtype, "--against", args.against,
           "--warmup", str(args.warmup), "--reps", str(args.reps), "--json", str(out)]
    for p in PARAMS.get(Path(variant).stem, []):
        cmd += ["--param", p]
    if args.backward:
        cmd += ["--backward"]
    print("$ " + shlex.join(cmd[2:]), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr)
    if not out.exists():
        print(f"{variant}: bench failed (exit {r.returncode})", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def cell_vs(res: dict, peer: str) -> str:
    r = next((x for x in res["results"] if x["name"] == peer), None)
    if r is None:
        return "-"
    if not r["available"]:
        return "n/a"
    warn = "" if r.get("err_ok") in (True, None) else " (!err)"
    return f"{r['einattn_speedup']:.2f}x ({r['ms_median']:.1f} ms){warn}" if "einattn_speedup" in r else "-"


def table(rows: list[tuple[str, dict | None]]) -> str:
    out = ["| variant | einattn ms | GFLOP/s | % peak | vs sdpa | vs flex | vs eager |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, res in rows:
        if res is None:
            out.append(f"| {name} | failed | | | | | |")
            continue
        ours = res["results"][0]
        if not ours["available"]:
            out.append(f"| {name} | {ours['note']} | | | | | |")
            continue
        out.append(f"| {name} | {ours['ms_median']:.2f} | {ours['gflops']:.0f} | {ours['pct_peak']:.0f}% | "
                   + " | ".join(cell_vs(res, p) for p in PEERS) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--shape", default=DEFAULT_SHAPE)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--against", default=",".join(PEERS))
    ap.add_argument("--variants", default=None, help="comma-separated names or spec paths (default: all)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json-dir", default=None, help="keep each variant's bench JSON here")
    ap.add_argument("--backward", action="store_true", help="time forward + backward (einattn bench --backward)")
    args = ap.parse_args(argv)
    names = args.variants.split(",") if args.variants else variants()
    keep = Path(args.json_dir) if args.json_dir else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in names:
            out = (keep or Path(tmp)) / f"{Path(v).stem}.json"
            out.unlink(missing_ok=True)
            rows.append((Path(v).stem, bench_one(v, args, out)))
    first = next((r for _, r in rows if r), None)
    print(f"`python benchmarks/run_zoo.py {shlex.join(argv if argv is not None else sys.argv[1:])}`: "
          f"target {args.target}, {args.dtype}, {args.shape}"
          + (f", {first['threads']} threads, peak {first['peak_gflops']:.0f} GFLOP/s ({first['peak_source']})"
             if first else "") + f"; params {PARAMS}; GQA with g = h/4. "
          "vs X = X's median ms / einattn's (> 1: einattn faster), X's ms in brackets.\n")
    print(table(rows))
    return 0 if all(r for _, r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
