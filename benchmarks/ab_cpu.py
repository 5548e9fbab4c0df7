"""A/B the CPU kernels of another git revision against the working tree's, in one process.

REV's whole compiler (its kernel plan, renderer and template: ``git archive`` into a
temporary tree, imported by a subprocess) renders each variant's kernel source; the
working tree renders its own; both are built with the working tree's ``build_module``
and called alternately (no launcher: kernel time only).

    python benchmarks/ab_cpu.py d01d0ab softmax,causal --shape b=1,h=8,m=2048,n=2048,d=64,e=64

Prints per variant the medians, the median of the per-pair ratios (new / old) and the
largest difference between the two outputs, then a torch.matmul probe.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the packages of the fixed layout, mapped under einattn/ as pyproject's package-dir does
PACKAGES = ("ir", "compiler", "backends", "templates", "examples", "autotune")
OLD_RENDER = """
import json, sys
import einattn
from einattn.compiler import make_kernel_plan, make_plan
try:
    from einattn.backends.cpu.render import render
    from einattn.backends.cpu.config import CpuConfig
except ImportError:                       # before the layout of subpackages
    from einattn.backends.cpu_codegen import CpuConfig, render
job = json.load(sys.stdin)
json.dump({name: render(make_kernel_plan(make_plan(einattn.load_spec(name))), CpuConfig(), static, job["vec"])
           for name, static in job["static"].items()}, sys.stdout)
"""


def old_sources(rev: str, static: dict, vec: int, where: Path) -> dict[str, str]:
    """The kernel source REV renders for each variant, with REV's whole compiler (its own
    kernel plan, renderer and template), rendered in a subprocess that imports REV's tree."""
    src, pkg = where / "src", where / "py" / "einattn"
    src.mkdir()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    shutil.copytree(src / "einattn", pkg)
    for name in PACKAGES:
        if (src / name).is_dir():
            (pkg / name).symlink_to(src / name)
    p = subprocess.run([sys.executable, "-c", OLD_RENDER], input=json.dumps({"static": static, "vec": vec}),
                       capture_output=True, text=True, cwd=where, env={**os.environ, "PYTHONPATH": str(pkg.parent)})
    if p.returncode:
        raise SystemExit(f"{rev} could not render: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rev")
    ap.add_argument("variants")
    ap.add_argument("--shape", default="b=1,h=8,m=2048,n=2048,d=64,e=64")
    ap.add_argument("--reps", type=int, default=21)
    a = ap.parse_args()
    import einattn
    from einattn.backends.cpu import build as cb
    from einattn.backends.cpu import render as newcg
    from einattn.backends.cpu.config import CpuConfig
    from einattn.backends.cpu.runtime import set_threads
    from einattn.compiler import make_kernel_plan, make_plan
    from einattn.ir import bind_sizes, eval_params
    shape = {k: int(v) for k, v in (p.split("=") for p in a.shape.split(","))}
    shape.setdefault("g", max(1, shape["h"] // 4))
    set_threads(torch.get_num_threads())
    vec = cb.host().fp32_lanes
    names = a.variants.split(",")
    plans = {name: make_kernel_plan(make_plan(einattn.load_spec(name))) for name in names}
    statics = {name: {i: shape[i] for i in kp.static} for name, kp in plans.items()}
    with tempfile.TemporaryDirectory() as tmp:
        old = old_sources(a.rev, statics, vec, Path(tmp))
        for name in names:
            spec, kp = einattn.load_spec(name), plans[name]
            fns = {"old": cb.build_module(old[name])["main"],
                   "new": cb.build_module(newcg.render(kp, CpuConfig(), statics[name], vec))["main"]}
            x = [torch.randn([shape[i] for i in t.indices]) * 0.5 for t in spec.inputs]
            sizes = bind_sizes(spec, {t.name: tuple(v.shape) for t, v in zip(spec.inputs, x)})
            params = [float(v) for v in eval_params(spec, sizes, None).values()]
            outs = {k: [torch.empty([sizes[i] for i in spec.stmt(o).indices]) for o in spec.outputs] for k in fns}
            res: dict = {k: [] for k in fns}
            for _ in range(a.reps):
                for k, f in fns.items():
                    t = time.perf_counter()
                    f(*x, *outs[k], *params)
                    res[k].append(time.perf_counter() - t)
            o, n = statistics.median(res["old"]) * 1e3, statistics.median(res["new"]) * 1e3
            pair = statistics.median(b / a for a, b in zip(res["old"], res["new"]))
            diff = max(float((p - q).abs().max()) for p, q in zip(outs["old"], outs["new"]))
            print(f"{name:16s} old {o:7.2f} ms  new {n:7.2f} ms  new/old {n / o:5.3f} "
                  f"(median of pairs {pair:5.3f})  max|new-old| {diff:.1e}", flush=True)
    m = torch.randn(2048, 2048)
    m @ m
    t = time.perf_counter()
    for _ in range(5):
        m @ m
    dt = (time.perf_counter() - t) / 5
    print(f"probe: torch.matmul 2048^3 fp32 {2 * 2048 ** 3 / dt / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
