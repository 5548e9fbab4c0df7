"""Measuring candidate configs of one workload: build, check, time.

For each candidate config :func:`evaluate` prepares the kernel, checks its output
against the float64 reference on a small input of the same compiled-in sizes, and
times it on the workload. A candidate that is refused by the config checks
(``invalid``), fails to build (``build_error``), raises when run (``crash``), runs
past the timeout (``timeout``) or disagrees with the reference (``inaccurate``) is
recorded with its reason and dropped; the run goes on. Timing: one call that is not
counted (it builds the kernel at the workload's sizes), then ``warmup + repeats``
rounds that time every surviving candidate once in turn (interleaved, so a slow
phase of a shared machine hits them all alike); the time is the median of the
rounds after the warm-up.

The clock is injectable (``timer(fn, config) -> seconds per call of fn``), as
Triton's autotuner takes ``do_bench``: tests pass a fake one and measure nothing.
The default, :func:`wall_clock`, times a batch of calls when one is too short to time.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from einattn.backends import get_backend, parse_target
from einattn.backends.base import Workload
from einattn.backends.torch.check import TOLERANCE, random_inputs, rel_error
from einattn.compiler import make_kernel_plan, make_plan
from einattn.ir import EinattnError, UnsupportedError, eval_params

from .cost import count_flops

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAMPLE_S = 2e-3          # a timed sample is a batch of calls at least this long
MAX_BATCH = 64
SLOW_CALL_S = 0.25       # past this a call is its own warm-up
CHECK_QUERY, CHECK_KEY = 33, 1031     # the small check input: enough key tiles for every split to get some


@dataclass(frozen=True)
class Task:
    """One workload of one spec on one target. ``params`` are the user's overrides."""
    cascade: object
    target: str
    workload: Workload
    params: tuple[tuple[str, float], ...] = ()
    interpret: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.workload.dtype]

    @property
    def device(self) -> str:
        t = parse_target(self.target)
        return "cuda" if t.kind in ("cuda", "rocm") and not self.interpret else "cpu"


@dataclass
class Outcome:
    """What became of one candidate; ``ms`` is the median time of one call."""
    config: dict
    status: str = "ok"
    ms: float | None = None
    gflops: float | None = None
    reason: str = ""
    error: float | None = None            # relative error against the reference
    samples: list = field(default_factory=list)
    worker: str = ""                      # who measured it (executors fill it in)
    again: bool = False                   # measured a second time beside the default (the final choice)
    vs_default: float | None = None       # median per-round time ratio to the default in that round

    def to_json(self) -> dict:
        d = {"config": self.config, "status": self.status}
        if self.ms is not None:
            d["ms"] = round(self.ms, 6)
        if self.gflops is not None:
            d["gflops"] = round(self.gflops, 2)
        if self.reason:
            d["reason"] = self.reason[:300]
        if self.error is not None:
            d["error"] = float(f"{self.error:.3g}")
        if self.worker:
            d["worker"] = self.worker
        if self.again:
            d["again"] = True
        if self.vs_default is not None:
            d["vs_default"] = round(self.vs_default, 4)
        return d


def wall_clock(fn, config) -> float:
    """Seconds per call of ``fn`` (synchronising a GPU around it): one call, and when that is
    shorter than ``SAMPLE_S`` a batch of calls that long, divided by its size."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t
    if one >= SAMPLE_S:
        return one
    n = min(MAX_BATCH, math.ceil(SAMPLE_S / max(one, 1e-9)))
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def check_sizes(kp, sizes: dict, interpreted: bool = False) -> dict:
    """The small input every candidate is checked on: the workload's sizes with the query and key
    lengths cut to ``CHECK_QUERY`` and ``CHECK_KEY`` (compiled-in sizes unchanged: the same build).
    In Triton's interpreter (numpy, one program at a time) smaller still: 17 queries, 257 keys
    (16 parts of 16 keys) and every other runtime size (batch, heads) at most 2."""
    out = dict(sizes)
    q, k = (17, 257) if interpreted else (CHECK_QUERY, CHECK_KEY)
    out[kp.query] = min(sizes[kp.query], q)
    out[kp.key] = min(sizes[kp.key], k)
    if interpreted:
        out.update({i: min(v, 2) for i, v in sizes.items() if i not in kp.static and i not in (kp.query, kp.key)})
    return out


class Bench:
    """The inputs, reference and FLOP count of a task, made once and shared by its candidates."""

    def __init__(self, task: Task, inputs: bool = True):
        self.task = task
        c = task.cascade
        self.target = parse_target(task.target)
        self.backend = get_backend(self.target)
        self.plan = make_plan(c)
        self.kp = make_kernel_plan(self.plan)
        self.sizes = task.workload.as_dict()
        self.params = eval_params(c, self.sizes, dict(task.params))
        self.small = check_sizes(self.kp, self.sizes, interpreted=task.interpret)
        self.small_params = eval_params(c, self.small, dict(task.params))
        dev = task.device
        self.check_inputs = random_inputs(c, self.small, task.dtype, seed=1, device=dev)
        ref = get_backend(parse_target("reference"))
        self.want = ref.launch(ref.prepare(self.plan, parse_target("reference"), {}),
                               self.check_inputs, self.small, self.small_params)
        # the workload's inputs (not needed when only checking)
        self.inputs = random_inputs(c, self.sizes, task.dtype, seed=0, device=dev) if inputs else None
        self.flops = count_flops(c, self.sizes, self.params)["flops"] if inputs else 0
        self.tolerance = max(TOLERANCE[task.dtype], 2e-2 if task.device != "cpu" or task.interpret else 0)

    def options(self) -> dict:
        return {"interpret": True} if self.task.interpret else {}

    def prepare(self, config: dict):
        return self.backend.prepare(self.plan, self.target, dict(config), **self.options())

    def check(self, art) -> float:
        got = self.backend.launch(art, self.check_inputs, self.small, self.small_params)
        return max(rel_error(got[o], self.want[o]) for o in self.task.cascade.outputs)

    def runner(self, art):
        return lambda: self.backend.launch(art, self.inputs, self.sizes, self.params)


def evaluate(task: Task, configs: list[dict], *, timer=None, warmup: int = 1, repeats: int = 5,
             timeout_s: float = 60.0, bench: Bench | None = None) -> list[Outcome]:
    """Build, check and time ``configs`` on ``task``; one :class:`Outcome` each, in order."""
    timer = timer or wall_clock
    bench = bench or Bench(task)
    outs = [Outcome(dict(c)) for c in configs]
    alive: list[tuple[Outcome, object]] = []      # (outcome, run)
    firsts: list[float] = []
    for o in outs:
        try:
            art = bench.prepare(o.config)
        except UnsupportedError as e:
            o.status, o.reason = "invalid", str(e)
            continue
        except Exception as e:                          # a bug in a candidate costs that candidate
            o.status, o.reason = "build_error", f"{type(e).__name__}: {e}"
            continue
        try:
            o.error = bench.check(art)
        except EinattnError as e:
            o.status, o.reason = "invalid", str(e)
            continue
        except Exception as e:
            o.status, o.reason = "crash", f"{type(e).__name__}: {e}"
            continue
        if not o.error <= bench.tolerance:
            o.status, o.reason = "inaccurate", f"relative error {o.error:.3g} > {bench.tolerance:g} on the check input"
            continue
        run = bench.runner(art)
        try:
            first = timer(run, o.config)           # builds at the workload's sizes, if not yet
        except Exception as e:
            o.status, o.reason = "crash", f"{type(e).__name__}: {e}"
            continue
        if first > timeout_s:
            o.status, o.reason = "timeout", f"one call took {first:.3g} s > {timeout_s:g} s"
            continue
        alive.append((o, run))
        firsts.append(first)
    if firsts and max(firsts) > SLOW_CALL_S:
        # long calls (prefill at large n): the uncounted first call was the warm-up; fewer rounds
        warmup, repeats = 0, min(repeats, 3)
    time_rounds(alive, timer, warmup, repeats, timeout_s)
    for o, _ in alive:
        if o.status == "ok" and o.samples:
            o.ms = statistics.median(o.samples) * 1e3
            o.gflops = bench.flops / (o.ms * 1e-3) / 1e9 if o.ms > 0 else None
    return outs


def time_rounds(alive, timer, warmup: int, repeats: int, timeout_s: float) -> None:
    """Interleaved rounds: every surviving candidate once per round; samples after ``warmup``."""
    for r in range(warmup + repeats):
        for o, run in alive:
            if o.status != "ok":
                continue
            try:
                t = timer(run, o.config)
            except Exception as e:
                o.status, o.reason = "crash", f"{type(e).__name__}: {e}"
                continue
            if t > timeout_s:
                o.status, o.reason = "timeout", f"one call took {t:.3g} s > {timeout_s:g} s"
            elif r >= warmup:
                o.samples.append(t)
