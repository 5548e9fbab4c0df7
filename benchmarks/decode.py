"""Decoding and short queries on the CPU: einattn (no config: the program chosen per call) against
SDPA, FlexAttention (torch.compile) and eager PyTorch, called alternately in one process.

For each shape: einattn's median time, the K/V bytes it must read over that time (GB/s) and as
a share of this machine's read bandwidth (``x.sum()`` over 256 MB, measured first, beside a
torch.matmul probe), and each peer's time over einattn's (> 1: einattn is faster). A peer that
cannot express the variant prints n/a (``einattn/bench/peers.py``).

    python benchmarks/decode.py                      # the issue's six shapes, then the grid
    python benchmarks/decode.py --grid none --flex   # the six shapes, FlexAttention too
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

SIX = [("softmax", "b=1,h=8,m=1,n=8192,d=64,e=64"), ("softmax", "b=1,h=8,m=4,n=8192,d=64,e=64"),
       ("softmax", "b=1,h=8,m=16,n=8192,d=64,e=64"), ("softmax", "b=4,h=32,m=1,n=4096,d=64,e=64"),
       ("gqa", "b=1,h=32,g=8,m=1,n=8192,d=128,e=128"), ("gqa", "b=8,h=32,g=8,m=1,n=2048,d=128,e=128"),
       ("softmax", "b=1,h=1,m=2048,n=2048,d=64,e=64")]          # a prefill shape, for contrast
GRID_VARIANTS = ["softmax", "causal_bottom_right", "gqa", "sinks", "softcap", "sigmoid"]


def read_bandwidth(mb: int = 256) -> float:
    """GB/s of ``x.sum()`` over ``mb`` MB of float32 (best of 5), with torch's threads."""
    x = torch.ones(mb * (1 << 20) // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def grid_shapes(text: str, variants: list[str]) -> list[tuple[str, str]]:
    if text == "none":
        return []
    out = []
    for name in variants:
        for n in (2048, 8192, 32768):
            for m in (1, 4, 16, 64):
                heads = "h=32,g=8" if name == "gqa" else "h=8"
                width = 128 if name == "gqa" else 64
                out.append((name, f"b=1,{heads},m={m},n={n},d={width},e={width}"))
    return out


def main() -> int:
    from einattn.bench.timing import ENV       # both thread pools sleep after a call (read at start)
    if any(os.environ.get(k) != v for k, v in ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ENV})
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="all", choices=("all", "none"))
    ap.add_argument("--variants", default=",".join(GRID_VARIANTS), help="the grid's variants")
    ap.add_argument("--no-six", action="store_true", help="only the grid")
    ap.add_argument("--flex", action="store_true", help="also FlexAttention (compiles per shape: slow)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    os.environ.setdefault("EINATTN_CACHE_DIR", tempfile.mkdtemp(prefix="einattn-decode-"))
    import einattn
    from einattn.backends.torch.check import rel_error
    from einattn.bench.flops import measure_matmul_peak
    from einattn.bench.harness import bench_inputs
    from einattn.bench.peers import make_peer
    from einattn.ir import bind_sizes, eval_params
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tune_zoo import interleaved

    bw = read_bandwidth()
    print(f"probe: torch.matmul 2048^3 fp32 {measure_matmul_peak():.0f} GFLOP/s, read bandwidth "
          f"{bw:.1f} GB/s (x.sum() over 256 MB), {torch.get_num_threads()} threads")
    peers = ["sdpa"] + (["flex"] if args.flex else []) + ["eager"]
    print(f"{args.rounds} interleaved rounds, medians; peer columns: peer time / einattn time")
    print("| variant | shape | program | einattn ms | K/V GB/s | % of read bw | " +
          " | ".join(f"{p} ms | {p} / einattn" for p in peers) + " |")
    print("|---" * (6 + 2 * len(peers)) + "|")
    kernels: dict = {}
    for name, shape_text in ([] if args.no_six else SIX) + grid_shapes(args.grid, args.variants.split(",")):
        spec = einattn.load_spec(name)
        shape = {k: int(v) for k, v in (p.split("=") for p in shape_text.split(","))}
        x = bench_inputs(spec, shape, torch.float32)
        sizes = bind_sizes(spec, {t.name: tuple(x[t.name].shape) for t in spec.inputs})
        params = eval_params(spec, sizes, {})
        k = kernels.get(name) or kernels.setdefault(name, einattn.compile(spec, target="cpu"))
        fns = [lambda k=k: k(**x)]
        ps = [make_peer(p, name, x, params) for p in peers]
        fns += [p.fn for p in ps if p.fn is not None]
        ours = k(**x)
        for p in ps:
            if p.fn is not None:
                theirs = p.fn()
                err = rel_error(torch.as_tensor(ours if not isinstance(ours, tuple) else ours[0]).double(),
                                torch.as_tensor(theirs if not isinstance(theirs, tuple) else theirs[0]).double())
                assert err < 1e-3, f"{name} {shape_text}: einattn and {p} differ by {err:.2e}"
        times = [statistics.median(t) for t in interleaved(fns, args.rounds)]
        t0 = times[0]
        kv = sum(x[t].numel() * 4 for t in x if t in ("K", "V"))
        cfg = k._artifact.concrete(sizes, params).config
        prog = f"{cfg.PROGRAM} {cfg.PACK if cfg.decode else 1}x{cfg.BLOCK_M} S={cfg.KV_SPLITS}"
        cols, j = [], 1
        for p in ps:
            if p.fn is None:
                cols.append("n/a | n/a")
            else:
                cols.append(f"{times[j] * 1e3:.2f} | {times[j] / t0:.2f}x")
                j += 1
        print(f"| {name} | {shape_text} | {prog} | {t0 * 1e3:.3f} | {kv / t0 / 1e9:.1f} | "
              f"{100 * kv / t0 / 1e9 / bw:.0f}% | " + " | ".join(cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
