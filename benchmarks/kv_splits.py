"""What splitting the key loop buys at decoding shapes on the CPU: the same config with
KV_SPLITS = 1, 2, 4, called alternately in one process (medians; ratios to KV_SPLITS=1).

    python benchmarks/kv_splits.py softmax,causal,sinks,gqa --shape b=1,h=1,m=16,n=8192,d=64,e=64
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants")
    ap.add_argument("--shape", default="b=1,h=1,m=16,n=8192,d=64,e=64")
    ap.add_argument("--splits", default="1,2,4")
    ap.add_argument("--config", default="BLOCK_M=16,SCORE_RJ=16,SCORE_RI=16",
                    help="the other tunables, the same for every split count")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    import einattn
    from einattn.backends.torch.check import random_inputs
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from tune_zoo import interleaved, probe, sizes_for
    shape = {k: int(v) for k, v in (p.split("=") for p in args.shape.split(","))}
    base = {k: int(v) for k, v in (p.split("=") for p in args.config.split(","))} if args.config else {}
    splits = [int(s) for s in args.splits.split(",")]
    print(f"probe: torch.matmul 2048^3 fp32 {probe():.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"shape {args.shape}, config {args.config}, {args.rounds} interleaved rounds")
    print("| variant | " + " | ".join(f"KV_SPLITS={s} ms" for s in splits) + " | " +
          " | ".join(f"{s} vs 1" for s in splits[1:]) + " |")
    print("|---" * (2 * len(splits)) + "|")
    for name in args.variants.split(","):
        spec = einattn.load_spec(name)
        sizes = sizes_for(spec, shape)
        x = random_inputs(spec, sizes, torch.float32)
        ks = [einattn.compile(spec, target="cpu", config={**base, "KV_SPLITS": s}) for s in splits]
        times = interleaved([lambda k=k: k(**x) for k in ks], args.rounds)
        med = [statistics.median(t) * 1e3 for t in times]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in med) + " | " +
              " | ".join(f"{med[0] / m:.2f}x" for m in med[1:]) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
