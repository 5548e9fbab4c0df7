"""The key loops of einattn's compiled Triton kernels, per 1-pass zoo variant, without a GPU.

Each variant is compiled ahead of time (fp16, b=1 h=8 m=n=4096) for sm_90 at the tiles of
Triton's fused-attention tutorial (BLOCK_M=128, BLOCK_N=64, 8 warps, 3 stages) and the loops of
its SASS are counted (``backends/triton/sass.py``): instructions issued per iteration (NOPs
excluded), matrix-multiply (HGMMA) and MUFU.EX2 instructions, asynchronous copies and TMA
loads, and the registers ptxas gives a thread. Loops are listed in address order: for a causal
kernel loop 0 is the key loop over full tiles and loop 1 the diagonal one; other masks may give
one loop (the tiles' two bodies inside it) or three.

A model of one iteration of the full-tile loop (loop 0) on one H100 SM (CUDA targets), as issue 15
states it: tensor cores at 4096 fp16 FLOP a clock, MUFU.EX2 at 16 a clock, and 4 schedulers each
issuing one warp instruction a clock (so 8 warps cost 2 clocks per SASS instruction). ``overlap``
is the largest of the three (the other blocks of the SM hide the rest), ``serial`` the matrix time
plus the larger of the other two (one block, nothing hidden); the truth lies between. Blocks per SM
come from the registers (64K a SM) and the shared memory (228 KiB).

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
from einattn.compiler.kernel_plan import Kind

TUTORIAL_TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
MMA_FLOP_PER_CLOCK, EX2_PER_CLOCK, SCHEDULERS = 4096, 16, 4      # one H100 SM
SM_REGISTERS, SM_SHARED = 65536, 228 * 1024
TUTORIAL = {64: (310, 107), 128: (359, 151)}     # causal full loop, registers (RESULTS.md, issue 15)


def blocks_per_sm(registers: int, shared: int, warps: int) -> int:
    by_regs = SM_REGISTERS // (-(-registers // 8) * 8 * 32 * warps)
    return max(0, min(by_regs, SM_SHARED // max(shared, 1)))


def model_clocks(flops: int, ex2: int, instructions: int, warps: int) -> tuple[int, int, str]:
    """(overlap, serial) clocks of one loop iteration on one SM and the bound of the overlap."""
    parts = {"mma": flops / MMA_FLOP_PER_CLOCK, "ex2": ex2 * 32 * warps / EX2_PER_CLOCK,
             "issue": instructions * warps / SCHEDULERS}
    bound = max(parts, key=parts.get)
    return round(parts[bound]), round(parts["mma"] + max(parts["ex2"], parts["issue"])), bound


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
        print("| variant | registers | spills | blocks / SM | loop 0 instructions | loop 1 instructions "
              "| mma / ex2 per loop | async copies / TMA loads per loop | model loop 0 clocks: overlap (bound) / serial |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        if t.kind == "cuda" and config == TUTORIAL_TILES and a.target == "cuda:sm_90" and d in TUTORIAL:
            ins, regs = TUTORIAL[d]
            o, ser, bound = model_clocks(2 * 128 * 64 * 2 * d, 34, ins, 8)
            print(f"| *tutorial (recorded)* | {regs} | 0 | {blocks_per_sm(regs, 0, 8)} | {ins} | - | 8 or 12 / 34 "
                  f"| TMA | {o} ({bound}) / {ser} |")
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
            blocks, model = "-", "-"
            if t.kind == "cuda" and loops:
                warps, kp = art.config.num_warps, art.plan
                blocks = blocks_per_sm(r["registers"], r.get("shared_memory", 0), warps)
                width = sum(sizes[op.contract] for op in kp.scores) + \
                    sum(sizes[op.value_index] for p in kp.passes for op in p.loop if op.kind is Kind.VALUE)
                flops = 2 * art.config.BLOCK_M * art.config.BLOCK_N * width
                o, ser, bound = model_clocks(flops, loops[0]["ex2"], loops[0]["instructions"], warps)
                model = f"{o} ({bound}) / {ser}"
            print(f"| {name} | {r.get('registers')} | {spills} | {blocks} | {cell[0]} | {cell[1]}{more} | {mma} "
                  f"| {cp} | {model} |", flush=True)


if __name__ == "__main__":
    main()
