"""Run the Triton kernels on a real CUDA GPU: correctness against the float64 reference
across the zoo (fp32, fp16, bf16), IEEE inputs (NaN / +-inf / huge), then speed against
SDPA and FlexAttention (torch.compile) in one process, timed with triton.testing.do_bench.

Usage (on a machine with a CUDA GPU, einattn installed):
    python benchmarks/gpu_check.py [--out results.json] [--quick]

Prints one line per check and a speed table; exits 1 if a check failed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # the repo's tests/ (zoo inputs)

import einattn  # noqa: E402
from einattn.bench.peers import make_peer  # noqa: E402
from einattn.ir import bind_sizes, eval_params  # noqa: E402
from tests.helpers import ZOO_NAMES, agree, as_tuple, ieee_mismatch, reference_outputs, zoo_inputs  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
EXTREME = ("softmax", "causal", "sliding_window", "bias", "sinks", "lse", "relu", "centered_relu", "softcap")
SPEED = ("softmax", "causal", "alibi", "softcap", "sliding_window")


def check(name: str, x: dict, dtype, rel: float) -> str | None:
    got = as_tuple(einattn.compile(name, target="cuda")(**{k: v.to("cuda", dtype) for k, v in x.items()}))
    xs = {k: v.to(dtype).double() for k, v in x.items()}      # the reference on the rounded inputs
    want = as_tuple(einattn.compile(name, target="reference")(**xs))
    msgs = [ieee_mismatch(g, w, rel) for g, w in zip(got, want)]
    return "; ".join(m for m in msgs if m) or None


def correctness(quick: bool) -> list[dict]:
    rows = []
    for name in ZOO_NAMES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            if quick and dtype is torch.bfloat16 and name not in ("softmax", "causal"):
                continue
            sz = dict(b=2, h=4, m=77, n=131, d=64, e=64)
            try:
                msg = check(name, zoo_inputs(name, dtype=torch.float32, **sz), dtype, TOL[dtype])
            except Exception as e:       # noqa: BLE001 - report and go on
                msg = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append({"check": "zoo", "name": name, "dtype": str(dtype)[6:], "ok": msg is None, "msg": msg})
            print(f"zoo {name:22s} {str(dtype)[6:]:9s} {'ok' if msg is None else 'FAIL ' + msg}", flush=True)
    for name in EXTREME:
        for val in (math.nan, math.inf, -math.inf, 1e30):
            x = zoo_inputs(name, dtype=torch.float32, b=1, h=2, m=37, n=200, d=64, e=64)
            for inp in x:
                y = {k: v.clone() for k, v in x.items()}
                t = y[inp].view(-1)
                t[(7 * t.numel()) // 11] = val
                try:
                    msg = check(name, y, torch.float32, 1e-3)
                except Exception as e:   # noqa: BLE001
                    msg = f"{type(e).__name__}: {str(e)[:200]}"
                rows.append({"check": "ieee", "name": name, "input": inp, "value": str(val), "ok": msg is None,
                             "msg": msg})
                if msg:
                    print(f"ieee {name} {inp}={val}: FAIL {msg}", flush=True)
    print(f"ieee: {sum(r['ok'] for r in rows if r['check'] == 'ieee')}/"
          f"{sum(r['check'] == 'ieee' for r in rows)} ok", flush=True)
    return rows


def random_cascades(count: int) -> list[dict]:
    """The random attention-shaped cascades of tests/cascades.py (seeds 0..count-1) on the GPU in
    fp32, each against the float64 reference with the test suite's criterion."""
    from tests.cascades import random_case
    rows = []
    for seed in range(count):
        text, sizes, x, poked = random_case(seed)
        try:
            spec = einattn.load_spec(text)
            w64, w32 = (tuple(reference_outputs(spec, x, dtype=dt)[o] for o in spec.outputs)
                        for dt in (torch.float64, torch.float32))
            s32 = einattn.compile(text, target="streaming")(**x)
            got = einattn.compile(text, target="cuda")(**{k: v.cuda() for k, v in x.items()})
            agree(tuple(g.cpu() for g in as_tuple(got)), w64, w32, s32, f"seed {seed}")
            msg = None
        except einattn.UnsupportedError as e:     # a documented refusal (docs/backends.md): not a failure
            rows.append({"check": "cascade", "seed": seed, "poked": poked, "ok": True,
                         "refused": str(e)[:200]})
            continue
        except Exception as e:           # noqa: BLE001
            msg = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append({"check": "cascade", "seed": seed, "poked": poked, "ok": msg is None, "msg": msg})
        if msg:
            print(f"cascade seed {seed} ({poked}): FAIL {msg}", flush=True)
    refused = sum("refused" in r for r in rows)
    print(f"random cascades: {sum(r['ok'] for r in rows) - refused} compiled and agree, {refused} refused "
          f"(UnsupportedError), {sum(not r['ok'] for r in rows)} wrong, of {len(rows)}", flush=True)
    return rows


def speed(quick: bool) -> list[dict]:
    from triton.testing import do_bench
    rows = []
    b, h, n, d = (2, 16, 4096, 64) if quick else (4, 16, 4096, 64)
    for name in SPEED:
        spec = einattn.load_spec(name)
        x = zoo_inputs(name, dtype=torch.float16, b=b, h=h, m=n, n=n, d=d, e=d)
        x = {k: v.cuda() for k, v in x.items()}
        sizes = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
        params = eval_params(spec, sizes, None)
        k = einattn.compile(name, target="cuda")
        fns = {"einattn": lambda: k(**x)}
        for peer in ("sdpa", "flex"):
            p = make_peer(peer, name, x, params)
            if p.fn is not None:
                fns[peer] = p.fn
        flops = 4 * b * h * n * n * d * (0.5 if name == "causal" else 1.0)
        row = {"name": name, "shape": f"b={b},h={h},n={n},d={d}", "dtype": "float16"}
        for who, fn in fns.items():
            try:
                fn()
                torch.cuda.synchronize()
                ms = do_bench(fn, warmup=50, rep=300)
                row[who] = round(ms, 4)
                row[who + "_tflops"] = round(flops / ms / 1e9, 1)
            except Exception as e:       # noqa: BLE001
                row[who] = f"{type(e).__name__}: {str(e)[:120]}"
        for peer in ("sdpa", "flex"):
            if isinstance(row.get(peer), float) and isinstance(row.get("einattn"), float):
                row[f"vs_{peer}"] = round(row[peer] / row["einattn"], 3)     # > 1: einattn faster
        # the cost of the finiteness check of skipped key tiles' inputs (masked variants only)
        kp = k._artifact.plan
        if kp.skipped_inputs():
            from einattn.backends.base import hidden_nonfinite
            row["finite_check_ms"] = round(do_bench(lambda: hidden_nonfinite(kp, x), warmup=20, rep=100), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--cascades", type=int, default=0, help="also run this many random cascades")
    a = ap.parse_args()
    t0 = time.time()
    dev = torch.cuda.get_device_name()
    print(f"device {dev}, torch {torch.__version__}", flush=True)
    import triton
    print(f"triton {triton.__version__}", flush=True)
    probe = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    from triton.testing import do_bench
    ms = do_bench(lambda: probe @ probe, warmup=10, rep=50)
    mm = round(2 * 8192 ** 3 / ms / 1e9, 1)
    print(f"probe: fp16 matmul 8192^3 {mm} TFLOP/s", flush=True)
    rows = [] if a.skip_correctness else correctness(a.quick)
    rows += random_cascades(a.cascades)
    fails = [r for r in rows if not r["ok"]]
    sp = [] if a.skip_speed else speed(a.quick)
    res = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "matmul_tflops": mm,
           "correctness": rows, "speed": sp, "seconds": round(time.time() - t0, 1)}
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"{len(rows) - len(fails)}/{len(rows)} checks ok; {len(fails)} failed; {res['seconds']} s")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
