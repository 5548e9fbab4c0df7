"""Block-sparse attention on the CPU (spec v1.1): MoBA- and NSA-style specs against einattn's own
dense causal kernel at the same shape, called alternately in one process, fp32.

For each N: the median time of the sparse kernel (stage A, the selection, on the host with the
torch evaluator; stage B, the cpu kernel, its key loop over the host-made tile lists), the share
of stage A, the fraction of (query tile, key tile) pairs the lists visit, and the causal kernel.
Inputs are random (``--inputs random``: every token's selection is independent, so a tile of 64
tokens visits the union of 64 selections) or clustered (``--inputs clustered``: the queries and
keys of one block of BS positions share a random centre, as neighbouring tokens do in a trained
model, so the tokens of a tile mostly agree). A ``torch.matmul`` probe is printed first.

    python benchmarks/block_sparse.py moba --n 8192 16384 32768
    python benchmarks/block_sparse.py nsa --n 8192 16384
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import einattn  # noqa: E402
from einattn.backends.tiles import visit_lists  # noqa: E402
from einattn.bench.flops import measure_matmul_peak  # noqa: E402
from einattn.ir import bind_sizes, eval_params  # noqa: E402

SHAPES = {  # the shapes: heads, KV heads, head dim, params
    "moba": (4, 4, 128, {"BS": 512, "k": 3}),
    "nsa": (16, 1, 128, {"SB": 64, "k": 16, "CL": 32, "CS": 16, "W": 512}),
}


def make(name: str, n: int, how: str, block: int, g: torch.Generator) -> dict:
    h, kvh, d, _ = SHAPES[name]

    def x(heads):
        t = torch.randn(1, heads, n, d, generator=g)
        if how == "clustered":
            nb = -(-n // block)
            centre = torch.randn(1, heads, nb, d, generator=g) * 2
            t = t * 0.5 + centre.repeat_interleave(block, 2)[:, :, :n]
        return t / d ** 0.25
    out = {"Q": x(h), "K": x(kvh), "V": torch.randn(1, kvh, n, d, generator=g)}
    if name == "nsa":
        out.update({k: torch.zeros(1, h, n) for k in ("Gc", "Gs", "Gw")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", choices=sorted(SHAPES))
    ap.add_argument("--n", type=int, nargs="*", default=[8192, 16384, 32768])
    ap.add_argument("--inputs", nargs="*", default=["random", "clustered"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--programs", nargs="*", help="of NSA's: tile, 'token x group', auto (default: all)")
    a = ap.parse_args()
    print(f"torch.matmul 2048^3 probe: {measure_matmul_peak():.0f} GFLOP/s (best of 5), "
          f"threads {torch.get_num_threads()}")
    h, kvh, d, params = SHAPES[a.spec]
    causal = einattn.compile("causal", target="cpu")
    block = params.get("BS", params.get("SB"))
    programs = {"tile": {}}
    if kvh < h:                 # a task of one token x its GQA group: the decode program, PACK = H / KV heads
        programs = {"tile": {"PROGRAM": "tile"}, "token x group": {"PROGRAM": "decode", "PACK": h // kvh,
                                                                   "BLOCK_M": 1}, "auto": {}}
        programs = {k: v for k, v in programs.items() if not a.programs or k in a.programs}
    print(f"{a.spec}: H={h}, KV heads={kvh}, d={d}, {params}, fp32, cpu")
    print("| inputs | program | N | sparse s | selection s (share) | tiles visited | causal s | sparse / causal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for how, (prog, config), n in ((w, p, n) for w in a.inputs for p in programs.items() for n in a.n):
        sparse = einattn.compile(a.spec, target="cpu", config=config, **params)
        x = make(a.spec, n, how, block, torch.Generator().manual_seed(n))
        kc = x["K"].expand(1, h, n, d)
        vc = x["V"].expand(1, h, n, d)
        sparse(**x)
        causal(x["Q"], kc, vc)
        ts, tc, tsel = [], [], []
        for _ in range(a.reps):
            t = time.perf_counter()
            sparse(**x)
            ts.append(time.perf_counter() - t)
            t = time.perf_counter()
            sel = sparse.select(**x)
            tsel.append(time.perf_counter() - t)
            t = time.perf_counter()
            causal(x["Q"], kc, vc)
            tc.append(time.perf_counter() - t)
        chosen = sparse.attend if sparse.group is None else sparse.choose(
            {t.name: {**x, **sel}[t.name] for t in sparse.stages.attend.inputs})[0]
        kp = chosen._artifact.kp
        xb = {**x, **sel}
        xb = {t.name: xb[t.name] for t in kp.cascade.inputs}
        sz = bind_sizes(kp.cascade, {k: tuple(v.shape) for k, v in xb.items()})
        pr = eval_params(kp.cascade, sz, {k: v for k, v in params.items()
                                          if k in {p.name for p in kp.cascade.params}})
        cfg = chosen._artifact.concrete(sz, pr).config
        pack = ("h", cfg.PACK) if cfg.decode else None
        frac = visit_lists(kp, xb, sz, pr, cfg.BLOCK_M, cfg.BLOCK_N, pack)[2]
        s, c, sl = statistics.median(ts), statistics.median(tc), statistics.median(tsel)
        if sparse.last_choice:
            prog = f"{prog} ({sparse.last_choice.split(':')[0]})"
        print(f"| {how} | {prog} | {n} | {s:.3f} | {sl:.3f} ({sl / s:.0%}) | {frac:.1%} | {c:.3f} | "
              f"{s / c:.2f} |", flush=True)


if __name__ == "__main__":
    main()
