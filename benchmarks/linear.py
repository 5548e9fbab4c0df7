"""Linear attention on the CPU: the chunked scan against einattn's quadratic kernel and an eager
PyTorch chunked scan, called alternately in one process.

Variant ``lightning`` (per-head decay exp(-s_h (m - n)) at the ALiBi slopes), B=1, H=8, d=e=64,
fp32. For each N: the median time of einattn's chunked scan (``ALGORITHM='chunked'``), its time
per token, the quadratic 1-pass kernel (``ALGORITHM='quadratic'``, up to --max-quadratic), what
``ALGORITHM='auto'`` picks, and the eager chunked scan (``backends.torch.linear.scan_torch``: the
same algorithm in PyTorch matmuls, on the same features). A ``torch.matmul`` probe is printed
first so a slow machine can be told from a slow kernel.

    python benchmarks/linear.py                 # N = 512 ... 65536
    python benchmarks/linear.py --n 2048 8192 --reps 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import einattn
from einattn.backends.torch.linear import finish, scan_inputs, scan_torch
from einattn.compiler.linear import linear_form
from einattn.ir import bind_sizes, eval_params


def median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matmul_probe() -> float:
    a = torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / median_time(lambda: a @ a, 5) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="lightning")
    ap.add_argument("--n", type=int, nargs="*", default=[512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-quadratic", type=int, default=16384)
    ap.add_argument("--chunks", type=int, nargs="*", default=[32, 64, 128], help="CHUNK sweep at N=8192")
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch.matmul 2048^3 probe: {matmul_probe():.0f} GFLOP/s, threads {torch.get_num_threads()}")
    chunked = einattn.compile(a.spec, target="cpu", config={"ALGORITHM": "chunked"})
    quad = einattn.compile(a.spec, target="cpu", config={"ALGORITHM": "quadratic"})
    auto = einattn.compile(a.spec, target="cpu")
    form = linear_form(chunked.spec)
    print("| N | chunked ms | ns/token | quadratic ms | chunked vs quadratic | auto picks | eager chunked ms "
          "| vs eager |")
    print("|---|---|---|---|---|---|---|---|")
    for n in a.n:
        x = {k: torch.randn(1, a.heads, n, a.dim) * 0.5 for k in "QKV"}
        sizes = bind_sizes(chunked.spec, {k: tuple(t.shape) for k, t in x.items()})
        params = eval_params(chunked.spec, sizes)
        ch = auto._artifact.choice(sizes, torch.get_num_threads())

        def eager():
            si = scan_inputs(form, x, sizes, params, 64)
            return finish(form, si, scan_torch(si, form.mask, 64)[0], sizes)

        reps = a.reps if n <= 16384 else max(2, a.reps // 2)
        tc = median_time(lambda: chunked(**x), reps)
        tq = median_time(lambda: quad(**x), max(1, reps // 2)) if n <= a.max_quadratic else None
        te = median_time(eager, max(1, reps // 2))
        q = f"{tq * 1e3:.1f} | {tq / tc:.2f}x" if tq else "- | -"
        print(f"| {n} | {tc * 1e3:.2f} | {tc / n * 1e9:.0f} | {q} | {ch.algorithm} | {te * 1e3:.1f} | "
              f"{te / tc:.1f}x |", flush=True)
    n = 8192
    x = {k: torch.randn(1, a.heads, n, a.dim) * 0.5 for k in "QKV"}
    print(f"\nCHUNK and SCHEDULE at N={n}:")
    for c in a.chunks:
        for s in ("fused", "materialised"):
            k = einattn.compile(a.spec, target="cpu", config={"ALGORITHM": "chunked", "CHUNK": c, "SCHEDULE": s})
            print(f"  CHUNK={c} {s}: {median_time(lambda: k(**x), a.reps) * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
