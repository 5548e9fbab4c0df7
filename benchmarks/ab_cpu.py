"""A/B the CPU kernels of another git revision against the working tree's, in one process.

The renderer and template of REV (``backends/cpu/{render,expr,config}.py`` or, before the
layout of subpackages, ``backends/cpu_codegen.py`` and ``backends/cpu_expr.py``; and
``templates/cpu/attention.tvmscript.jinja``) are taken from git into a temporary package;
both render the working tree's kernel plan, are built with the working tree's
``build_module`` and are called alternately (no launcher: kernel time only).

    python benchmarks/ab_cpu.py d01d0ab softmax,causal --shape b=1,h=8,m=2048,n=2048,d=64,e=64

Prints per variant the medians, the median of the per-pair ratios (new / old) and the
largest difference between the two outputs, then a torch.matmul probe.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the renderer's files of each layout: (module to import, {file name: path in the revision})
LAYOUTS = [("render", {"render.py": "backends/cpu/render.py", "expr.py": "backends/cpu/expr.py",
                       "config.py": "backends/cpu/config.py"}),
           ("cpu_codegen", {"cpu_codegen.py": "backends/cpu_codegen.py", "cpu_expr.py": "backends/cpu_expr.py"})]
TEMPLATE = "templates/cpu/attention.tvmscript.jinja"


def _show(rev: str, path: str) -> str | None:
    p = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None


def old_codegen(rev: str, where: Path):
    pkg = where / "abold"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / Path(TEMPLATE).name).write_text(_show(rev, TEMPLATE))
    for module, files in LAYOUTS:
        texts = {name: _show(rev, path) for name, path in files.items()}
        if all(t is not None for t in texts.values()):
            break
    else:
        raise SystemExit(f"{rev}: no CPU renderer found at {[p for _, fs in LAYOUTS for p in fs.values()]}")
    for name, text in texts.items():
        # read the template beside the renderer, not from the installed package
        text = text.replace('(importlib.resources.files("einattn.templates") / "cpu" / TEMPLATE)',
                            '(__import__("pathlib").Path(__file__).parent / TEMPLATE)')
        (pkg / name).write_text(text)
    sys.path.insert(0, str(where))
    return importlib.import_module(f"abold.{module}")


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
    with tempfile.TemporaryDirectory() as tmp:
        oldcg = old_codegen(a.rev, Path(tmp))
        for name in a.variants.split(","):
            spec = einattn.load_spec(name)
            kp = make_kernel_plan(make_plan(spec))
            static = {i: shape[i] for i in newcg.static_indices(kp)}
            fns = {"old": cb.build_module(oldcg.render(kp, oldcg.CpuConfig(), static, vec))["main"],
                   "new": cb.build_module(newcg.render(kp, CpuConfig(), static, vec))["main"]}
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
