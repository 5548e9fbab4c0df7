"""bf16 on the CPU: einattn's bf16 kernel (``vdpbf16ps`` where the host has it) against its own
fp32 kernel, SDPA in bf16 and FlexAttention in bf16 (under torch.compile), called round-robin in
one process.

For each shape (B=1, H=8, N=M, d=e) and each 1-pass zoo variant: median ms and GFLOP/s (useful
FLOPs, ``einattn.bench.flops.count_flops``: a causal mask halves them) of each implementation,
einattn bf16's speedup over each, and its share of the bf16 dot-product peak, measured first by
a probe (``torch.matmul`` 2048^3 in bf16, which oneDNN runs on vdpbf16ps; also the fp32 probe);
the instruction's own peak (``dot_peak``: independent accumulators, no loads) is printed once.
Every output is checked against the float64 reference on the same bf16 inputs (max rel error
printed). Peers that cannot express a variant are "n/a".

    python benchmarks/bf16.py                                  # N = 2048, 8192; d = 64, 128
    python benchmarks/bf16.py --n 2048 --d 64 --variants softmax,causal --reps 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

# thread pools that sleep after a call, as `einattn bench` sets them (before torch is loaded):
# a pool left spinning takes the cores from whichever implementation is timed next
os.environ.update({"OMP_WAIT_POLICY": "PASSIVE", "TVM_THREAD_POOL_SPIN_COUNT": "0"})

import torch  # noqa: E402

import einattn  # noqa: E402
from einattn.bench.flops import count_flops  # noqa: E402
from einattn.bench.harness import attention_variants, bench_inputs  # noqa: E402
from einattn.bench.peers import make_peers  # noqa: E402
from einattn.bench.timing import ENV, time_round_robin  # noqa: E402
from einattn.ir import bind_sizes, eval_params  # noqa: E402

assert ENV.items() <= os.environ.items(), ENV


def probe(dtype) -> float:
    a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def dot_peak(accumulators: int = 24, threads: int | None = None) -> float:
    """GFLOP/s of vdpbf16ps alone: a TVM kernel keeping ``accumulators`` independent zmm
    accumulators busy per thread (as shared/STACK.md measured the fp32 FMA peak), through the
    same LLVM IR wrapper the kernels call (``backends/cpu/pairs.py``)."""
    import tvm

    from einattn.backends.cpu import pairs
    from einattn.backends.cpu.runtime import host
    threads = threads or torch.get_num_threads()
    ramp = "T.ramp(0, 1, 16)"
    body = "\n".join(f"                acc[{r}, {ramp}] = "
                     + pairs.dot(f"acc[{r}, {ramp}]", f"T.Broadcast(T.int32({0x3F803F80 + r}), 16)",
                                 "T.Broadcast(T.int32(1065369472), 16)") for r in range(accumulators))
    src = f"""
# from tvm.script import tirx as T
@T.prim_func
def main(h_o: T.handle, n: T.int32):
    o = T.match_buffer(h_o, ({threads}, 16), "float32")
    for t in T.parallel({threads}):
        acc = T.alloc_buffer(({accumulators}, 16), "float32", scope="local")
        with T.attr(0, "pragma_import_llvm", {pairs.IR!r}):
            for r in range({accumulators}):
                acc[r, {ramp}] = T.Broadcast(T.float32(0), 16)
        for it in range(n):
{body}
        for r in range({accumulators}):
            o[t, {ramp}] = o[t, {ramp}] + acc[r, {ramp}]
"""
    fn = tvm.compile(tvm.script.from_source(src), tvm.target.Target(host().tvm_target()))["main"]
    out, n = torch.zeros(threads, 16), 200_000
    fn(out, 1000)
    best = min(_timed(lambda: fn(out, n)) for _ in range(5))
    return threads * n * accumulators * 16 * 4 / best / 1e9       # 16 lanes x 2 pairs x (mul + add)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rel_err(out, want) -> float:
    out = out[0] if isinstance(out, tuple) else out
    want = want[0] if isinstance(want, tuple) else want
    return float((out.double() - want).abs().max() / want.abs().max())


def row(name: str, n: int, d: int, reps: int, against: list[str]) -> str:
    spec = einattn.load_spec(name)
    shape = {"b": 1, "h": 8, "m": n, "n": n, "d": d, "e": d} | ({"g": 2} if name.endswith("gqa") else {})
    xb = bench_inputs(spec, shape, torch.bfloat16)
    x32 = {k: v.float() for k, v in xb.items()}
    sizes = bind_sizes(spec, {k: tuple(v.shape) for k, v in xb.items()})
    over = {"W": 256} if name == "sliding_window" else {}      # the window the issues' goals name
    params = eval_params(spec, sizes, over)
    kern = einattn.compile(spec, target="cpu", **over)
    impls = [{"name": "einattn bf16", "fn": lambda: kern(**xb), "note": ""},
             {"name": "einattn fp32", "fn": lambda: kern(**x32), "note": ""}]
    impls += [dict(p, name=f"{p['name']} bf16") for p in make_peers(against, spec, xb, params)]
    time_round_robin(impls, 1, reps)
    flops = count_flops(spec, sizes, params)["flops"]
    ms = {im["name"]: statistics.median(im["times_ms"]) if im.get("times_ms") else None for im in impls}
    ref = einattn.compile(spec, target="reference", **over)(**{k: v.double() for k, v in xb.items()}) if n <= 2048 else None
    err = rel_err(impls[0]["out"], ref) if ref is not None else None
    ours = ms["einattn bf16"]
    cells = [name]
    for im in impls:
        m = ms[im["name"]]
        cells.append("n/a" if m is None else f"{m:.1f} ({flops / m / 1e6:.0f})")
    cells += [f"{ms[k] / ours:.2f}x" if ms[k] else "n/a" for k in list(ms)[1:]]
    cells += [f"{100 * flops / ours / 1e6 / PEAK_BF16:.0f}%", f"{err:.1e}" if err is not None else "-"]
    return "| " + " | ".join(cells) + " |"


PEAK_BF16 = 0.0


def main() -> None:
    global PEAK_BF16
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="*", default=[2048, 8192])
    ap.add_argument("--d", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--variants", default="", help="comma-separated zoo names (default: every 1-pass variant)")
    ap.add_argument("--variants-8192", default="softmax,causal",
                    help="the variants run at N > 2048 (default softmax,causal; 'all' for every one)")
    ap.add_argument("--against", default="sdpa,flex")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    names = a.variants.split(",") if a.variants else attention_variants()
    against = [p for p in a.against.split(",") if p and p != "none"]
    from einattn.backends.cpu.runtime import host
    if host().has_bf16:
        print(f"vdpbf16ps peak (24 independent zmm accumulators per thread, {torch.get_num_threads()} threads): "
              f"{dot_peak():.0f} GFLOP/s")
    for d in a.d:
        for n in a.n:
            PEAK_BF16 = probe(torch.bfloat16)
            print(f"\n### N={n}, d=e={d} (B=1, H=8), threads {torch.get_num_threads()}: torch.matmul 2048^3 "
                  f"probe {PEAK_BF16:.0f} GFLOP/s bf16, {probe(torch.float32):.0f} GFLOP/s fp32\n")
            cols = ["einattn bf16", "einattn fp32"] + [f"{p} bf16" for p in against]
            print("| variant | " + " | ".join(f"{c} ms (GFLOP/s)" for c in cols) + " | "
                  + " | ".join(f"vs {c}" for c in cols[1:]) + " | of bf16 probe | rel err |")
            print("|" + " --- |" * (2 * len(cols) + 2))
            todo = names if n <= 2048 or a.variants_8192 == "all" else \
                [v for v in a.variants_8192.split(",") if v in names]
            for name in todo:
                print(row(name, n, d, a.reps, against), flush=True)


if __name__ == "__main__":
    main()
