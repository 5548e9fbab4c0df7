"""einattn compile SPEC --target cuda:sm_90 --shape ... --out DIR: ahead-of-time GPU code and a report.

Writes ``kernel.py`` (the rendered Triton source), the compiled files
(``<name>.ptx`` + ``<name>.cubin`` for CUDA, ``<name>.amdgcn`` + ``<name>.hsaco``
for ROCm, and ``<name>.ttgir``) and ``report.json`` (plan, config, resources,
target, and each loop of the machine code with its instruction counts:
``backends/triton/sass.py``). No GPU is needed. The default dtype is float16: the dtype GPU attention
kernels are run in, and the one tensor cores serve at full rate (float32 products
run on the FMA units); ``einattn check`` defaults to float32 instead because it
asks for the strictest comparison with the float64 reference. Example::

    einattn compile causal --target cuda:sm_90 --shape b=1,h=8,m=1024,n=1024,d=64,e=64 \\
        --config BLOCK_M=128,BLOCK_N=64,num_warps=8,num_stages=3 --dtype float16 --out build/causal
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from einattn.ir import SpecError, UnsupportedError

from einattn.inputs import CMDLINE, DTYPES, parse_assignments, parse_params, parse_shape

DEFAULT_DTYPE = "float16"
GPU_DTYPES = ("float16", "bfloat16", "float32", "fp16", "bf16", "fp32")


def add(sub):
    p = sub.add_parser("compile", help="compile a spec ahead of time for a GPU target (PTX/cubin, AMDGCN/hsaco)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--target", required=True, help="cuda[:sm_80|sm_90|sm_100] or rocm[:gfx90a|gfx942]")
    p.add_argument("--shape", required=True, help="dim sizes, e.g. b=1,h=8,m=1024,n=1024,d=64,e=64 "
                                                  "(the head dims are compiled in; the others bind at launch)")
    p.add_argument("--config", default=None, help="BLOCK_M=128,BLOCK_N=64,num_warps=4,num_stages=3")
    p.add_argument("--dtype", default=None, choices=GPU_DTYPES,
                   help=f"input and kernel dtype (default {DEFAULT_DTYPE}: what GPU attention kernels run in)")
    p.add_argument("--param", action="append", help="override a spec param, e.g. --param W=128")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.set_defaults(run=run)


def _write(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bad_out(text: str, why: str) -> SpecError:
    return SpecError("cannot write to --out", loc=CMDLINE, expected="a writable directory (created if missing)",
                     found=f"{text!r}: {why}", fix="choose another directory")


def check_out(text: str) -> None:
    """Refuse an --out that cannot become a writable directory, before compiling (creates nothing)."""
    p = Path(text).absolute()
    if p.exists() and not p.is_dir():
        raise _bad_out(text, "it is a file")
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise _bad_out(text, f"{p} is a file")
    if not os.access(p, os.W_OK | os.X_OK):
        raise _bad_out(text, f"{p} is not writable")


def make_out(text: str) -> Path:
    """``--out`` created (with its parents) if missing."""
    try:
        Path(text).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _bad_out(text, e.strerror or str(e)) from None
    return Path(text)


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
    check_out(args.out)
    spec = einattn.load_spec(args.spec)
    shape = parse_shape(args.shape, spec)
    sizes = bind_sizes(spec, {t.name: tuple(shape[i] for i in t.indices) for t in spec.inputs})
    params = eval_params(spec, sizes, parse_params(args.param))
    dtype_name = args.dtype or DEFAULT_DTYPE
    dtype = DTYPES[dtype_name]
    backend = get_backend(target)
    planned = spec
    if spec.selects:            # block-sparse (v1.1): the kernel is the attention stage (compiler/selection.py)
        from einattn.compiler.selection import split
        from einattn.ir import bind_blocks
        sizes = bind_blocks(spec, sizes, params)
        planned = split(spec).attend
        params = {p.name: params[p.name] for p in planned.params}
    # the program and config a call at this shape runs (PROGRAM="auto": decode for short queries)
    art = backend.prepare(make_plan(planned), target, parse_assignments(args.config, "config", False)).at(sizes, params)
    ck = backend.build(art, sizes, dtype, params)
    out = make_out(args.out)
    _write(out / "kernel.py", art.source)
    files = ["kernel.py"]
    for suffix, data in ck.files.items():
        if data:
            _write(out / f"{ck.name}.{suffix}", data)
            files.append(f"{ck.name}.{suffix}")
    from einattn.backends.triton.sass import kernel_loops
    try:
        loops = kernel_loops(ck)
    except (OSError, RuntimeError) as e:        # no cuobjdump beside Triton, or it failed: report why
        loops = [{"error": f"{type(e).__name__}: {e}"}]
    from einattn.backends.triton.aot import aot_constexprs
    # what a launcher of these files must pass (EVEN_N: key lengths that are a multiple of BLOCK_N;
    # FOLD_<score>: the sign of the score scale at these params; TMA: contiguous, aligned K and V)
    constexprs = aot_constexprs(art, sizes, dtype, params)
    report = {
        "target": {**art.hardware.to_json(), "target": str(art.target)}, "constexprs": constexprs,
        "config": art.config.to_json(), "dtype": str(dtype).replace("torch.", ""), "shape": sizes,
        "params": params, "plan": plan_summary(art.plan), "kernel": ck.name, "resources": ck.resources,
        "loops": loops, "metadata": ck.metadata, "compile_seconds": round(ck.compile_seconds, 3),
        "files": files + ["report.json"],
    }
    _write(out / "report.json", json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    r = ck.resources
    regs = f"{r.get('registers')} registers" + (f", {r.get('sgprs')} SGPRs" if "sgprs" in r else "")
    spills = r.get("spill_stores", r.get("spill_vgprs", 0))
    print(f"{spec.name} -> {art.target} ({art.hardware.name}), "
          f"{dtype_name}{'' if args.dtype else ' (default --dtype)'}, config {art.config.to_json()}: "
          f"{r.get('shared_memory')} B shared memory, {regs}, spills {spills}; "
          f"{len(files) + 1} files in {out}")
    for k, lp in enumerate(loops):
        if "error" in lp:
            print(f"  loops not counted: {lp['error']}")
            continue
        print(f"  loop {k}: {lp['instructions']} instructions per iteration, {lp['mma']} matrix-multiply, "
              f"{lp['ex2']} exp2, {lp['async_copies']} async copies, {lp['tma_loads']} TMA loads")
    return 0
