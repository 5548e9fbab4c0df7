"""einattn compile SPEC --target cuda:sm_90 --shape ... --out DIR: ahead-of-time GPU code and a report.

Writes ``kernel.py`` (the rendered Triton source), the compiled files
(``<name>.ptx`` + ``<name>.cubin`` for CUDA, ``<name>.amdgcn`` + ``<name>.hsaco``
for ROCm, and ``<name>.ttgir``) and ``report.json`` (plan, config, resources,
target). No GPU is needed. Example::

    einattn compile causal --target cuda:sm_90 --shape b=1,h=8,m=1024,n=1024,d=64,e=64 \\
        --config BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3 --dtype float16 --out build/causal
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from einattn.ir import Loc, SpecError, UnsupportedError

from .common import DTYPES, parse_assignments, parse_params


def add(sub):
    p = sub.add_parser("compile", help="compile a spec ahead of time for a GPU target (PTX/cubin, AMDGCN/hsaco)")
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--target", required=True, help="cuda[:sm_80|sm_90|sm_100] or rocm[:gfx90a|gfx942]")
    p.add_argument("--shape", required=True, help="dim sizes, e.g. b=1,h=8,m=1024,n=1024,d=64,e=64 "
                                                  "(the head dims are compiled in; the others bind at launch)")
    p.add_argument("--config", default=None, help="BLOCK_M=128,BLOCK_N=64,num_warps=4,num_stages=3")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32", "fp16", "bf16", "fp32"])
    p.add_argument("--param", action="append", help="override a spec param, e.g. --param W=128")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.set_defaults(run=run)


def _write(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.replace(tmp, path)


def plan_summary(kp) -> dict:
    c = kp.cascade
    return {
        "spec": c.name, "structural_hash": c.structural_hash(), "passes": kp.plan.passes,
        "naive_passes": kp.plan.naive_passes, "rewrites": list(kp.plan.rewrites),
        "grid": list(kp.grid), "query": kp.query, "key": kp.key, "contract": list(kp.contract),
        "value": list(kp.value), "outputs": list(c.outputs),
        "schedule": [{"pass": p.index, "mask": None if p.mask is None else str(p.mask),
                      "skip_empty_tiles": p.skip_empty,
                      "loop": [f"{op.kind.value} {op.name}" for op in p.loop],
                      "epilogue": [op.name for op in p.epilogue]} for p in kp.passes],
    }


def run(args) -> int:
    import einattn
    from einattn.backends import get_backend, parse_target
    from einattn.compiler import make_plan
    from einattn.ir import bind_sizes, eval_params

    target = parse_target(args.target)
    if target.kind not in ("cuda", "rocm"):
        raise UnsupportedError(f"einattn compile writes GPU code: --target must be cuda[:sm_XX] or rocm[:gfxXXX], "
                               f"not '{target}' (use `einattn check` for the other targets)")
    spec = einattn.load_spec(args.spec)
    shape = parse_assignments(args.shape, "shape")
    missing = [i for t in spec.inputs for i in t.indices if i not in shape]
    if missing:
        raise SpecError("--shape does not give every dim", loc=Loc("<command line>"),
                        expected="sizes for " + ", ".join(dict.fromkeys(missing)))
    sizes = bind_sizes(spec, {t.name: tuple(shape[i] for i in t.indices) for t in spec.inputs})
    params = eval_params(spec, sizes, parse_params(args.param))
    dtype = DTYPES[args.dtype]
    backend = get_backend(target)
    art = backend.prepare(make_plan(spec), target, parse_assignments(args.config, "config", False))
    ck = backend.build(art, sizes, dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "kernel.py", art.source)
    files = ["kernel.py"]
    for suffix, data in ck.files.items():
        if data:
            _write(out / f"{ck.name}.{suffix}", data)
            files.append(f"{ck.name}.{suffix}")
    report = {
        "target": {**art.hardware.to_json(), "target": str(art.target)},
        "config": art.config.to_json(), "dtype": str(dtype).replace("torch.", ""), "shape": sizes,
        "params": params, "plan": plan_summary(art.plan), "kernel": ck.name, "resources": ck.resources,
        "metadata": ck.metadata, "compile_seconds": round(ck.compile_seconds, 3), "files": files + ["report.json"],
    }
    _write(out / "report.json", json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    r = ck.resources
    regs = f"{r.get('registers')} registers" + (f", {r.get('sgprs')} SGPRs" if "sgprs" in r else "")
    spills = r.get("spill_stores", r.get("spill_vgprs", 0))
    print(f"{spec.name} -> {art.target} ({art.hardware.name}), {args.dtype}, config {art.config.to_json()}: "
          f"{r.get('shared_memory')} B shared memory, {regs}, spills {spills}; "
          f"{len(files) + 1} files in {out}")
    return 0
