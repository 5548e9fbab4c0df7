"""einattn bench SPEC --target T --shape ... --against sdpa,flex,eager: time a kernel against its peers.

All implementations run in one process, interleaved round-robin (rep 1: einattn,
sdpa, flex, eager; rep 2: ...), so a slow phase of the shared machine hits them
alike; the report gives medians (and minima) after warm-up, GFLOP/s on the
useful FLOPs, the share of an fp32 FMA peak (by default that of the machines
benchmarks/RESULTS.md was measured on; --peak for this one) and einattn's speed
relative to each peer. Every output is checked against the float64 reference
(or against einattn's output when the reference would not fit in memory) so a
comparison is known to be like for like; a peer that cannot express the variant
prints "n/a".

Thread pools: PyTorch's OpenMP pool and TVM's pool both busy-wait after a call
by default and steal each other's cores when interleaved. libgomp reads
``OMP_WAIT_POLICY`` once, when torch is imported, which the CLI has done before
any subcommand runs; so unless the process started with
``OMP_WAIT_POLICY=PASSIVE`` and ``TVM_THREAD_POOL_SPIN_COUNT=0``, the command
re-runs itself in a child process with both set (and says so).

The work is done by ``einattn.bench``; this module parses, re-runs itself and prints.

Example:
    einattn bench softmax --target cpu --shape b=1,h=8,m=2048,n=2048,d=64,e=64 \\
        --against sdpa,flex,eager --json softmax.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from einattn.bench.flops import PEAK_FP32_GFLOPS
from einattn.bench.harness import DEFAULT_SHAPE, BenchOptions, run_bench
from einattn.bench.memory import MEMORY_IMPLS, MEMORY_N, measure_memory, memory_probe
from einattn.bench.peers import PEER_KINDS, peer_list
from einattn.bench.timing import ENV
from einattn.ir import SpecError

from einattn.inputs import CMDLINE, DTYPES, parse_params, parse_shape

from .common import positive_int, seed_int

REEXEC_MARK = "EINATTN_BENCH_REEXEC"

# (flag, dest) of every option, to rebuild the command line for the child process
_OPTIONS = (("--target", "target"), ("--shape", "shape"), ("--dtype", "dtype"), ("--config", "config"),
            ("--against", "against"), ("--warmup", "warmup"), ("--reps", "reps"), ("--seed", "seed"),
            ("--threads", "threads"), ("--peak", "peak"), ("--json", "json"),
            ("--memory-shape", "memory_shape"), ("--memory-probe", "memory_probe"))
_FLAGS = (("--memory", "memory"), ("--cold", "cold"), ("--backward", "backward"))


def add(sub):
    p = sub.add_parser("bench", help="time a kernel against SDPA, FlexAttention and eager PyTorch",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--target", default="cpu",
                   help="reference, streaming, cpu, cuda[:sm_XX], rocm[:gfxXXX] (default %(default)s)")
    p.add_argument("--shape", default=DEFAULT_SHAPE, help=f"dim sizes (default {DEFAULT_SHAPE})")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="input and kernel dtype (default %(default)s)")
    p.add_argument("--param", action="append", help="override a spec param, e.g. --param W=256")
    p.add_argument("--config", default=None, help="kernel parameters, e.g. BLOCK_N=64")
    p.add_argument("--against", default=",".join(PEER_KINDS),
                   help="comma-separated peers among sdpa, flex, eager ('none' for none)")
    p.add_argument("--warmup", type=positive_int, default=3,
                   help="untimed calls of each implementation, >= 1 (default %(default)s)")
    p.add_argument("--reps", type=positive_int, default=10, help="timed round-robin repetitions (default %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random inputs (default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for everyone (default torch.get_num_threads())")
    p.add_argument("--peak", type=peak_text, default=None,
                   help=f"GFLOP/s that %%peak refers to (default {PEAK_FP32_GFLOPS:g}, the fp32 FMA peak of "
                        f"the 2 Zen 5 cores the project measures on, not necessarily this machine's), or "
                        f"'matmul' to measure torch.matmul 2048^3 here")
    p.add_argument("--json", default=None, metavar="FILE", help="write every number to FILE")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS growth of one call, einattn vs eager, each in a fresh process")
    p.add_argument("--memory-shape", default=None,
                   help=f"shape for --memory (default: --shape with b=h=1 (g=1), m=n={MEMORY_N})")
    p.add_argument("--cold", action="store_true",
                   help="compile into a fresh, empty EINATTN_CACHE_DIR (a cold compile)")
    p.add_argument("--backward", action="store_true",
                   help="time forward + backward (the gradients of every input, for fixed random output "
                        "gradients), checked against torch.autograd of the float64 reference; FLOPs x 3.5")
    p.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def peak_text(text: str) -> str:
    """``--peak``: 'matmul' or a positive number of GFLOP/s (kept as text: the harness reads it)."""
    if text.strip().lower() == "matmul":
        return "matmul"
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GFLOP/s or 'matmul', found {text!r}")
    return text.strip()


def check_args(args) -> None:
    """Refuse bad input before re-running in a child and before any compile or timing."""
    import einattn
    from einattn.backends import parse_target
    spec = einattn.load_spec(args.spec)
    parse_target(args.target)
    peer_list(args.against)
    parse_shape(args.shape, spec)
    if args.memory_shape:
        parse_shape(args.memory_shape, spec, "memory-shape")
    parse_params(args.param)
    if args.json:
        parent = Path(args.json).absolute().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or Path(args.json).is_dir():
            raise SpecError("cannot write --json", loc=CMDLINE, expected="a file in an existing, writable directory",
                            found=repr(args.json), fix="create the directory or choose another path")


def options(args) -> BenchOptions:
    """The parsed command line as the harness's options."""
    return BenchOptions(spec=args.spec, target=args.target, shape=args.shape, dtype=args.dtype,
                        param=tuple(args.param or ()), config=args.config, against=args.against,
                        warmup=args.warmup, reps=args.reps, seed=args.seed, threads=args.threads,
                        peak=args.peak, cold=args.cold, backward=args.backward)


def run(args) -> int:
    if not args.memory_probe:
        check_args(args)
    if not _env_at_start_ok():
        return _reexec(args)
    if args.memory_probe:
        print(json.dumps(memory_probe(options(args), args.memory_probe)))
        return 0
    return bench(args)


def bench(args) -> int:
    opts = options(args)
    res = run_bench(opts)
    print(report(res), flush=True)
    if args.memory:
        res["memory"] = measure_memory(opts, res["shape"], args.memory_shape)
        print(memory_report(res["memory"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    bad = [r["name"] for r in res["results"] if r.get("err_ok") is False]
    return 1 if "einattn" in bad else 0


# ---------------------------------------------------------------------------
# Environment


def _initial_environ() -> dict[str, str]:
    """The environment this process started with (Linux), else the current one."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return dict(os.environ)
    out = {}
    for item in raw.split(b"\0"):
        k, eq, v = item.partition(b"=")
        if eq:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _env_at_start_ok() -> bool:
    start = _initial_environ()
    return all(start.get(k, "").upper() == v for k, v in ENV.items())


def _argv(args) -> list[str]:
    out = ["bench", args.spec]
    for flag, dest in _OPTIONS:
        if getattr(args, dest) is not None:
            out += [flag, str(getattr(args, dest))]
    for item in args.param or []:
        out += ["--param", item]
    out += [flag for flag, dest in _FLAGS if getattr(args, dest)]
    return out


def _reexec(args) -> int:
    env = {**os.environ, **ENV, REEXEC_MARK: "1"}
    sys.stdout.flush()
    return subprocess.run([sys.executable, "-m", "einattn.cli", *_argv(args)], env=env).returncode


def env_report() -> str:
    how = ("set by einattn bench, which re-ran itself so they apply before torch started"
           if _initial_environ().get(REEXEC_MARK) == "1" else "inherited: set before the process started")
    return ", ".join(f"{k}={v}" for k, v in ENV.items()) + f" ({how})"


# ---------------------------------------------------------------------------
# Printing


def report(res: dict) -> str:
    fl = res["flops"]
    shape = ",".join(f"{k}={v}" for k, v in res["shape"].items())
    params = ", ".join(f"{k}={v:.6g}" for k, v in res["params"].items())
    lines = [f"einattn bench: {res['spec']}{' forward + backward' if res.get('backward') else ''} on "
             f"{res['target']}, {res['dtype']}, {shape}"
             + (f" (params {params})" if params else "")
             + (f", config {res['config']}" if res["config"] else ""),
             f"threads: {res['threads']} for every implementation (torch.get_num_threads(); the kernel "
             f"uses the same unless EINATTN_NUM_THREADS is set)",
             f"thread pools: {env_report()}",
             f"useful FLOPs: {fl['flops']:.4g} ({fl['terms']})",
             f"peak: {res['peak_gflops']:.0f} GFLOP/s, {res['peak_source']}",
             f"einattn compile: backend import {res['compile']['backend_import_s']:.3f} s, then "
             f"{res['compile']['compile_s']:.3f} s for einattn.compile(), first call "
             f"{_fmt(res['compile']['first_call_s'], '.3f')} s (includes any lazy build; "
             f"{res['compile']['cache']})",
             f"timing: {res['warmup']} warm-up + {res['reps']} reps, round-robin "
             + ", ".join(r["name"] for r in res["results"] if r["available"])
             + f"; max err = max |err| / max |ref| against the {res['checked_against']}; "
             f"speedup = peer ms / einattn ms (> 1: einattn faster); spin = ms of CPU burnt during "
             f"a 20 ms sleep after a call (busy-waiting thread pools show several ms)",
             "",
             f"{'impl':8s} {'ms med':>9s} {'ms min':>9s} {'GFLOP/s':>8s} {'%peak':>6s} {'1st call s':>10s} "
             f"{'max err':>9s} {'speedup':>8s} {'spin':>5s}  form"]
    for r in res["results"]:
        if not r["available"]:
            lines.append(f"{r['name']:8s} {'n/a':>9s}  {r['note']}")
            continue
        err = _fmt(r["max_err"], ".1e") + ("" if r["err_ok"] in (True, None) else "!")
        speed = f"{r['einattn_speedup']:.2f}x" if "einattn_speedup" in r else ""
        spin = _fmt(r.get("spin_ms"), ".1f")
        lines.append(f"{r['name']:8s} {r['ms_median']:9.2f} {r['ms_min']:9.2f} {r['gflops']:8.1f} "
                     f"{r['pct_peak']:5.1f}% {_fmt(r['first_call_s'], '.3f'):>10s} {err:>9s} {speed:>8s} "
                     f"{spin:>5s}  {r['note']}")
    if any(r.get("err_ok") is False for r in res["results"]):
        lines.append("! = error above the dtype's tolerance: that comparison is not like for like")
    return "\n".join(lines)


def memory_report(mem: dict) -> str:
    lines = [f"memory at {mem['shape']}: peak RSS growth of one call (after a warm call), fresh process each"]
    for impl in MEMORY_IMPLS:
        r = mem.get(impl, {})
        if "error" in r:
            lines.append(f"  {impl:8s} n/a: {r['error']}")
        else:
            lines.append(f"  {impl:8s} {r['rss_growth_mib']:10.1f} MiB  (output {r['output_mib']:.1f} MiB, inputs "
                         f"{r['inputs_mib']:.1f} MiB, call {r['call_s']:.2f} s)")
    if "method" in mem.get("einattn", {}):
        lines.append(f"  method: {mem['einattn']['method']}")
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)
