"""One benchmark: build the inputs, compile, time einattn and its peers, check every output.

``run_bench`` returns plain data (the dict ``einattn bench --json`` writes); the
CLI prints it. Every output is checked against the float64 reference (or against
einattn's output when the reference would not fit in memory) so a comparison is
known to be like for like.

Example:
    >>> res = run_bench(BenchOptions("softmax", target="reference", shape="b=1,h=1,m=8,n=8,d=4,e=4",
    ...                              against="eager", warmup=1, reps=2))
    >>> [r["name"] for r in res["results"]], res["checked_against"]
    (['einattn', 'eager'], 'float64 reference')
"""
from __future__ import annotations

import importlib
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

from einattn.inputs import DTYPES, TOLERANCE, make_inputs, parse_assignments, parse_params, rel_error

from .flops import count_flops, resolve_peak
from .peers import PEER_KINDS, make_peers, peer_list, zoo_name
from .timing import ENV, spin_after_call, time_round_robin

DEFAULT_SHAPE = "b=1,h=8,m=2048,n=2048,d=64,e=64"
REF_MAX_SCORES = 2 ** 25         # largest B*H*M*N the float64 reference runs at (~0.3 GB per [M, N] tensor)
TOOLCHAIN = {"cpu": "tvm", "cuda": "triton", "rocm": "triton"}   # timed as "backend import"


@dataclass(frozen=True)
class BenchOptions:
    """What to bench; the fields are ``einattn bench``'s options, as text where the CLI takes text."""
    spec: str                               # a .yaml path or a zoo name
    target: str = "cpu"
    shape: str = DEFAULT_SHAPE              # "b=1,h=8,..."
    dtype: str = "float32"                  # a key of DTYPES
    param: tuple[str, ...] = ()             # "NAME=VALUE" overrides
    config: str | None = None               # "BLOCK_N=64,..."
    against: str = ",".join(PEER_KINDS)     # comma-separated peer kinds, or "none"
    warmup: int = 3
    reps: int = 10
    seed: int = 0
    threads: int | None = None
    peak: str | None = None                 # GFLOP/s, "matmul", or None for PEAK_FP32_GFLOPS
    cold: bool = False                      # compile into a fresh, empty EINATTN_CACHE_DIR
    backward: bool = False                  # time forward + backward (gradients of every input)


BACKWARD_FLOPS = 3.5     # forward + backward = 3.5 x the forward's FLOPs (FlashAttention-2's count)


def with_backward(fn, x: dict, seed: int):
    """``fn`` followed by its backward: the call returns the gradients of every input of ``x``
    (which require grad) for fixed random output gradients (drawn in float64 from ``seed``)."""
    import torch
    grads = []

    def call():
        for t in x.values():
            t.grad = None
        out = as_tuple(fn())
        if not grads:
            g = torch.Generator().manual_seed(seed + 1)
            grads.extend(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out)
        torch.autograd.backward(out, [g.to(o.dtype) for g, o in zip(grads, out)])
        return tuple(torch.zeros_like(v) if v.grad is None else v.grad for v in x.values())
    return call


def bench_inputs(spec, shape: dict, dtype, seed: int = 0) -> dict:
    """Random inputs (randn * 0.5); zoo variants with structured inputs get realistic ones
    (ALiBi's geometric slopes, sink logits near log N) as in tests/zoo.py."""
    import torch
    x = make_inputs(spec, shape, dtype, seed)
    name = zoo_name(spec)
    if name == "alibi":
        h = x["slope"].shape[0]
        x["slope"] = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=dtype)
    elif name == "sinks":
        x["t"] = (x["t"].double() + math.log(shape["n"])).to(dtype)
    return x


def attention_variants() -> list[str]:
    """The zoo's 1-pass variants that run the attention kernel (the linear ones run the chunked
    scan: benchmarks/linear.py)."""
    import einattn
    from einattn.compiler.linear import NotLinear, linear_form
    out = []
    for n in einattn.zoo_names():
        if einattn.compile(n, target="reference").plan.passes != 1:
            continue
        try:
            linear_form(einattn.load_spec(n))
        except NotLinear:
            out.append(n)
    return out


def setup(opts: BenchOptions, shape_text: str):
    """Load the spec and build its inputs at ``shape_text``; sets the thread count first.

    Returns (spec, shape, overrides, dtype, inputs, sizes, params).
    """
    import torch

    import einattn
    from einattn.ir import bind_sizes, eval_params
    if opts.threads:
        torch.set_num_threads(opts.threads)
        os.environ["EINATTN_NUM_THREADS"] = str(opts.threads)
    spec = einattn.load_spec(opts.spec)
    shape = parse_assignments(shape_text, "shape")
    overrides = parse_params(list(opts.param))
    dtype = DTYPES[opts.dtype]
    x = bench_inputs(spec, shape, dtype, opts.seed)
    sizes = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    params = eval_params(spec, sizes, overrides)
    return spec, shape, overrides, dtype, x, sizes, params


def as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def params_overrides(spec, params: dict) -> dict:
    """The evaluated params, as overrides (every param pinned to the bench's value)."""
    return {p.name: params[p.name] for p in spec.params}


def check_outputs(impls: list[dict], spec, x: dict, sizes: dict, params: dict, dtype, seed: int | None = None) -> str:
    """Max relative error of each implementation's last output (with ``seed``: its gradients,
    ``with_backward``) against the float64 reference (or einattn's output when the reference is
    too large). Returns what was used."""
    import einattn
    scores = math.prod(sizes[i] for i in spec.stmt(spec.stmts[0].name).indices)
    ours = impls[0]
    if scores <= REF_MAX_SCORES:
        ref = einattn.compile(spec, target="reference", **params_overrides(spec, params))
        if seed is None:
            want = as_tuple(ref(**x))
        else:
            x64 = {k: v.detach().double().requires_grad_() for k, v in x.items()}
            want = with_backward(lambda: ref(**x64), x64, seed)()
        against = "float64 reference" + (" (torch.autograd)" if seed is not None else "")
    elif "out" in ours:
        want = as_tuple(ours["out"])
        against = "einattn's output"
    else:
        return "nothing"
    for im in impls:
        if "out" not in im:
            continue
        got = as_tuple(im["out"])
        im["max_err"] = max(rel_error(g, w) for g, w in zip(got, want)) if len(got) == len(want) else math.inf
        im["err_ok"] = im["max_err"] <= TOLERANCE.get(dtype, 1e-4) * (10 if not against.startswith("float64") else 1)
    return against


def run_bench(opts: BenchOptions) -> dict:
    """Compile, time einattn and the peers round-robin, check their outputs; every number as a dict.

    ``results`` has one row per implementation, einattn first: medians and minima in ms,
    GFLOP/s of the useful FLOPs, %peak, first-call time, max error, spin, and for a peer
    ``einattn_speedup`` = peer ms / einattn ms. A peer that cannot run has ``available``
    False and the reason as its ``note``.
    """
    import torch

    import einattn
    spec, shape, overrides, dtype, x, sizes, params = setup(opts, opts.shape)
    against = peer_list(opts.against)
    threads = torch.get_num_threads()
    res: dict = {"spec": spec.name, "target": opts.target, "dtype": opts.dtype, "shape": shape,
                 "params": params, "config": opts.config, "threads": threads,
                 "env": {k: os.environ.get(k) for k in ENV}, "warmup": opts.warmup, "reps": opts.reps,
                 "backward": opts.backward}

    peak, peak_how = resolve_peak(opts.peak)
    fl = count_flops(spec, sizes, params)
    if opts.backward:
        fl = dict(fl, flops=fl["flops"] * BACKWARD_FLOPS,
                  terms=f"{fl['terms']}; forward + backward: x {BACKWARD_FLOPS} (FlashAttention-2's count)")
        x = {k: v.requires_grad_() for k, v in x.items()}
    res.update(peak_gflops=peak, peak_source=peak_how, flops=fl)

    cache_note = f"EINATTN_CACHE_DIR={os.environ.get('EINATTN_CACHE_DIR', '~/.cache/einattn')}"
    tmp = None
    if opts.cold:
        tmp = tempfile.TemporaryDirectory(prefix="einattn-bench-cache-")
        os.environ["EINATTN_CACHE_DIR"] = tmp.name
        cache_note = "fresh empty cache dir (--cold)"
    config = parse_assignments(opts.config, "config", False)
    from einattn.backends import get_backend, parse_target
    t = time.perf_counter()
    target = parse_target(opts.target)
    get_backend(target)
    if TOOLCHAIN.get(target.kind):                  # imported lazily by compile(): time it apart
        importlib.import_module(TOOLCHAIN[target.kind])
    import_s = time.perf_counter() - t
    t = time.perf_counter()
    kern = einattn.compile(spec, target=opts.target, config=config, **overrides)
    compile_s = time.perf_counter() - t
    res["compile"] = {"backend_import_s": import_s, "compile_s": compile_s, "cache": cache_note}

    impls = [{"name": "einattn", "fn": lambda: kern(**x), "note": f"target {opts.target}"}]
    impls += make_peers(against, spec, x, params)
    if opts.backward:
        for im in impls:
            if im["fn"] is not None:
                im["fn"] = with_backward(im["fn"], x, opts.seed)
    time_round_robin(impls, opts.warmup, opts.reps)
    if tmp is not None:
        tmp.cleanup()
    res["compile"]["first_call_s"] = impls[0].get("first_call_s")
    for im in impls:
        if im.get("times_ms"):
            im["spin_ms"] = spin_after_call(im["fn"])
    res["checked_against"] = check_outputs(impls, spec, x, sizes, params, dtype,
                                           opts.seed if opts.backward else None)

    ours_ms = statistics.median(impls[0]["times_ms"]) if impls[0].get("times_ms") else None
    rows = []
    for im in impls:
        r = {"name": im["name"], "available": bool(im.get("times_ms")), "note": im["note"],
             "first_call_s": im.get("first_call_s"), "max_err": im.get("max_err"), "err_ok": im.get("err_ok"),
             "spin_ms": im.get("spin_ms")}
        if r["available"]:
            med, mn = statistics.median(im["times_ms"]), min(im["times_ms"])
            r.update(ms_median=med, ms_min=mn, times_ms=im["times_ms"], gflops=fl["flops"] / med / 1e6,
                     pct_peak=100 * fl["flops"] / med / 1e6 / peak)
            if im is not impls[0] and ours_ms:
                r["einattn_speedup"] = med / ours_ms
        rows.append(r)
    res["results"] = rows
    return res
