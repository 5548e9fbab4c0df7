"""Modelled GPU time of the block-sparse kernels, without a GPU: ``backends/triton/model.predict``
of the attention stage (its ahead-of-time build's registers and shared memory) scaled by the share
of (query tile, key tile) pairs its lists visit, against the dense causal kernel scaled by the share
causal attention visits. The model counts every key tile (it ignores masks), so both sides are
scaled the same way; it ranks configs and is no forecast of absolute time (see its docstring).

    python benchmarks/block_sparse_model.py --n 8192 16384 32768      # MoBA-style, clustered inputs
"""
from __future__ import annotations

import argparse

import torch

import einattn
from einattn.backends import get_backend, parse_target
from einattn.backends.base import Workload
from einattn.backends.tiles import visit_lists
from einattn.backends.triton.hardware import load_target
from einattn.backends.triton.model import predict
from einattn.compiler import make_kernel_plan, make_plan
from einattn.ir import bind_sizes, eval_params

from block_sparse import SHAPES, make  # noqa: E402 (run from the repository root as a script)


def modelled(spec, sizes: dict, params: dict, target, fraction: float) -> tuple[float, dict]:
    backend = get_backend(target)
    plan = make_plan(spec)
    art = backend.prepare(plan, target, {}).at(sizes, params)
    ck = backend.build(art, sizes, torch.float16, params)
    p = predict(make_kernel_plan(plan), art.config, Workload.of(sizes, "float16"), load_target(target),
                ck.resources)
    return p["seconds"] * fraction * 1e3, ck.resources


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", nargs="?", default="moba", choices=sorted(SHAPES))
    ap.add_argument("--n", type=int, nargs="*", default=[8192, 16384, 32768])
    ap.add_argument("--inputs", default="clustered")
    ap.add_argument("--target", default="cuda:sm_90")
    a = ap.parse_args()
    target = parse_target(a.target)
    h, kvh, d, params = SHAPES[a.spec]
    block = params.get("BS", params.get("SB"))
    sparse = einattn.compile(a.spec, target="streaming", **params)
    st = sparse.stages
    print(f"{a.spec} on {target} (model), H={h}, KV heads={kvh}, d={d}, {params}, fp16, {a.inputs} inputs")
    print("| N | tiles visited | sparse ms (model) | causal ms (model) | sparse / causal |")
    print("| --- | --- | --- | --- | --- |")
    for n in a.n:
        x = make(a.spec, n, a.inputs, block, torch.Generator().manual_seed(n))
        xb = {**x, **sparse.select(**x)}
        xb = {t.name: xb[t.name] for t in st.attend.inputs}
        sz = bind_sizes(st.attend, {k: tuple(v.shape) for k, v in xb.items()})
        pr = eval_params(st.attend, sz, {k: v for k, v in params.items() if k in {p.name for p in st.attend.params}})
        art = get_backend(target).prepare(make_plan(st.attend), target, {}).at(sz, pr)
        frac = visit_lists(art.plan, xb, sz, pr, art.config.BLOCK_M, art.config.BLOCK_N)[2]
        ms, _ = modelled(st.attend, sz, pr, target, frac)
        causal = einattn.load_spec("causal")
        csz = {"b": 1, "h": h, "m": n, "n": n, "d": d, "e": d}
        cpr = eval_params(causal, csz)
        tiles = -(-n // art.config.BLOCK_N)
        cfrac = (tiles + 1) / (2 * tiles)          # the causal diagonal and the tiles below it
        cms, _ = modelled(causal, csz, cpr, target, cfrac)
        print(f"| {n} | {frac:.1%} | {ms:.2f} | {cms:.2f} | {ms / cms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
