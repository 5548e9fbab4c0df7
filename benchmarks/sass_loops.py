"""The key loops of einattn's compiled Triton kernels, per 1-pass zoo variant, without a GPU.

Each variant is compiled ahead of time (fp16, b=1 h=8 m=n=4096) for sm_90 at the tiles of
Triton's fused-attention tutorial (BLOCK_M=128, BLOCK_N=64, 8 warps, 3 stages) and the loops of
its SASS are counted (``backends/triton/sass.py``): instructions issued per iteration (NOPs
excluded), matrix-multiply (HGMMA) and MUFU.EX2 instructions, asynchronous copies and TMA
loads, and the registers ptxas gives a thread. Loops are listed in address order: for a causal
kernel loop 0 is the key loop over full tiles and loop 1 the diagonal one; other masks may give
one loop (the tiles' two bodies inside it) or three.

    python benchmarks/sass_loops.py                      # d = 64 and 128
    python benchmarks/sass_loops.py --d 64 --variants softmax,causal --target rocm:gfx942
"""
from __future__ import annotations

import argparse

import torch

import einattn
from einattn.backends import get_backend, parse_target
from einattn.backends.triton.sass import kernel_loops
from einattn.bench.harness import attention_variants
from einattn.compiler import make_plan

TUTORIAL_TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="cuda:sm_90")
    ap.add_argument("--d", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--variants", default="")
    a = ap.parse_args()
    t = parse_target(a.target)
    backend = get_backend(t)
    names = a.variants.split(",") if a.variants else attention_variants()
    config = TUTORIAL_TILES if t.kind == "cuda" else {}
    for d in a.d:
        print(f"\n### {a.target}, fp16, d=e={d}, config {config or 'default'}\n")
        print("| variant | registers | spills | loop 0 instructions | loop 1 instructions | mma / ex2 per loop "
              "| async copies / TMA loads per loop |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in names:
            sizes = {"b": 1, "h": 8, "m": 4096, "n": 4096, "d": d, "e": d} | ({"g": 2} if name == "gqa" else {})
            try:
                art = backend.prepare(make_plan(einattn.load_spec(name)), t, config).at(sizes, {})
                ck = backend.build(art, sizes, torch.float16)
            except einattn.EinattnError as e:
                print(f"| {name} | refused: {str(e).splitlines()[0][:120]} |||||")
                continue
            loops = kernel_loops(ck)
            r = ck.resources
            spills = r.get("spill_stores", r.get("spill_vgprs", 0))
            cell = [str(lp["instructions"]) for lp in loops[:2]] + ["-"] * (2 - min(len(loops), 2))
            mma = ", ".join(f"{lp['mma']} / {lp['ex2']}" for lp in loops)
            cp = ", ".join(f"{lp['async_copies']} / {lp['tma_loads']}" for lp in loops)
            more = f" (+{len(loops) - 2} more loops)" if len(loops) > 2 else ""
            print(f"| {name} | {r.get('registers')} | {spills} | {cell[0]} | {cell[1]}{more} | {mma} | {cp} |",
                  flush=True)


if __name__ == "__main__":
    main()
