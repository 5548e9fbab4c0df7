"""Decorated plain-PyTorch functions on the CPU (examples/decorated/): the decorated call against
the same function run eagerly, under torch.compile (inductor), and the kernel of its derived spec
called directly (what the decorator's dispatch costs), interleaved in one process.

Columns: each time in ms (median of interleaved rounds) and peer time / decorated time (> 1:
einattn faster). A torch.matmul probe is printed first (this machine's speed varies by session).

    python benchmarks/decorated.py                           # b=1 h=8 m=n=2048 d=64, fp32
    python benchmarks/decorated.py --n 4096 --no-inductor
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["softcap_alibi_gqa", "sliding_window", "sigmoid", "gated", "sinks"]


def load(name):
    sys.path.insert(0, str(ROOT / "examples" / "decorated"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "decorated" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.attention


def inputs(name, b, h, m, n, d):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)       # noqa: E731
    kvh = 2 if name == "softcap_alibi_gqa" else h
    q, k, v = r(b, h, m, d), r(b, kvh, n, d), r(b, kvh, n, d)
    extra = {"softcap_alibi_gqa": [torch.tensor([2 ** (-8 * (i + 1) / h) for i in range(h)])],
             "sliding_window": [256], "sigmoid": [], "gated": [r(b, h, m, d)], "sinks": [r(h)]}[name]
    return [q, k, v, *extra]


def main() -> int:
    from einattn.bench.timing import ENV
    if any(os.environ.get(k) != v for k, v in ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ENV})
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-inductor", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("EINATTN_CACHE_DIR", tempfile.mkdtemp(prefix="einattn-decorated-"))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tune_zoo import interleaved

    from einattn.bench.flops import measure_matmul_peak
    print(f"probe: torch.matmul 2048^3 fp32 {measure_matmul_peak():.0f} GFLOP/s, {torch.get_num_threads()} threads")
    b, h, m, n, d = 1, 8, args.n, args.n, 64
    peers = ["eager"] + ([] if args.no_inductor else ["inductor"]) + ["kernel"]
    print(f"b={b} h={h} m=n={n} d={d} fp32, {args.rounds} interleaved rounds, medians; peer / decorated")
    print("| example | passes | decorated ms | " + " | ".join(f"{p} ms | {p} / decorated" for p in peers) + " |")
    print("|---" * (3 + 2 * len(peers)) + "|")
    with torch.no_grad():
        for name in EXAMPLES:
            att = load(name)
            x = inputs(name, b, h, m, n, d)
            out = att(*x)
            ref = att.fn(*[a.double() if isinstance(a, torch.Tensor) else a for a in x])
            err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-4, (name, err)
            tr, kernel = next(iter(att._entries.values()))[0]
            kin = tr.kernel_inputs([a for a in x if isinstance(a, torch.Tensor)], torch.float32)
            fns = [lambda: att(*x), lambda: att.fn(*x)]
            if "inductor" in peers:
                comp = torch.compile(att.fn, dynamic=False)
                comp(*x)
                fns.append(lambda: comp(*x))
            fns.append(lambda: kernel(*kin))
            times = [statistics.median(t) for t in interleaved(fns, args.rounds)]
            cols = " | ".join(f"{t * 1e3:.2f} | {t / times[0]:.2f}x" for t in times[1:])
            passes = f"{kernel.plan.naive_passes}->{kernel.plan.passes}"
            print(f"| {name} | {passes} | {times[0] * 1e3:.2f} | {cols} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
