"""Verifying tuning records against today's code and toolchain (``einattn cache verify``).

For each record: the spec is loaded again (a zoo name or the file the record names)
and must still plan to the same rewritten cascade; the fingerprint's toolchain fields
(einattn, TVM or Triton version, template hash) must match this installation; the
winner's kernel is generated again and its source hash must equal the record's;
then it is compiled (on the CPU: built and run; GPU targets: compiled ahead of time
and run in Triton's interpreter) and checked against the float64 reference on a
small input. A record whose hardware fields name another machine (another CPU, core
count or cache size) cannot be checked here and is reported as skipped, not stale.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from einattn.backends import get_backend, parse_target
from einattn.backends.base import Workload
from einattn.compiler import make_plan
from einattn.ir import EinattnError

from .database import Record
from .key import einattn_version, fingerprint_difference
from .measure import Task
from .tuner import check_in_interpreter, fingerprint, source_sha

# fingerprint fields that name the software (a change makes a record stale); the others name hardware
TOOLCHAIN = ("einattn", "tvm", "triton", "torch", "template", "version")


@dataclass
class Verdict:
    record: Record
    status: str           # ok, stale, failed, skipped
    reasons: list

    def line(self) -> str:
        r = self.record
        head = f"{r.id} {r.spec_name} on {r.key.target} {dict(r.key.bucket)}"
        return f"{self.status.upper():7} {head}" + (": " + "; ".join(self.reasons) if self.reasons else "")


def load_record_spec(rec: Record, search: list[Path] = ()):
    """The spec a record was tuned from: its file when it exists, else a zoo spec of its name."""
    from einattn.ir import parse_spec
    f = rec.extra.get("spec_file") or ""
    for cand in [Path(f), *[Path(d) / Path(f).name for d in search]] if f else []:
        if cand.is_file() and not str(cand).startswith("examples/"):
            return parse_spec(cand.read_text(), str(cand))
    from importlib import resources
    zoo = resources.files("einattn.examples") / f"{rec.spec_name}.yaml"
    if zoo.is_file():
        return parse_spec(zoo.read_text(), f"examples/{rec.spec_name}.yaml")
    raise FileNotFoundError(f"the spec '{rec.spec_name}' ({f or 'no file recorded'}) is not a zoo spec and its "
                            f"file is not here")


def verify(rec: Record, *, check: bool = True) -> Verdict:
    try:
        t = parse_target(rec.key.target)
        backend = get_backend(t)
        spec = load_record_spec(rec)
    except (FileNotFoundError, EinattnError) as e:
        return Verdict(rec, "failed", [str(e)])
    plan = make_plan(spec)
    if plan.cascade.structural_hash() != rec.key.spec:
        return Verdict(rec, "stale", [f"spec '{rec.spec_name}' now plans to another cascade "
                                      f"({plan.cascade.structural_hash()} != {rec.key.spec})"])
    here = {**fingerprint(backend, t), "einattn": einattn_version()}
    diff = fingerprint_difference(dict(rec.key.fingerprint), here)
    soft = [d for d in diff if d.split(":")[0] in TOOLCHAIN or any(x in d.split(":")[0] for x in TOOLCHAIN)]
    hard = [d for d in diff if d not in soft]
    if hard:
        return Verdict(rec, "skipped", ["tuned on another machine: " + "; ".join(hard)])
    reasons = [f"toolchain changed: {d}" for d in soft]
    task = Task(spec, str(t), Workload(tuple(sorted(rec.workload.items())), rec.key.dtype),
                tuple(sorted(rec.extra.get("params", {}).items())))
    try:
        sha = source_sha(task, plan, rec.winner)
    except EinattnError as e:
        return Verdict(rec, "failed", reasons + [f"the winner no longer compiles: {e}"])
    if rec.source_sha and sha and sha != rec.source_sha:
        reasons.append(f"the generated kernel changed (source {sha} != {rec.source_sha} recorded)")
    if check:
        try:
            err = check_record(task, t, rec, sha)
        except Exception as e:
            return Verdict(rec, "failed", reasons + [f"{type(e).__name__}: {str(e)[:300]}"])
        if not err <= 2e-2 if t.kind != "cpu" else not err <= 1e-4:
            return Verdict(rec, "failed", reasons + [f"relative error {err:.3g} against the reference"])
    return Verdict(rec, "stale" if reasons else "ok", reasons)


_INTERPRETED: dict = {}      # (source sha, config) -> error: the same kernel on sm_80 and sm_90 runs once


def check_record(task: Task, t, rec: Record, sha: str | None = None) -> float:
    """Compile the winner and return its relative error on the small check input."""
    backend = get_backend(t)
    if t.kind in ("cuda", "rocm"):
        plan = make_plan(task.cascade)
        backend.model_time(plan, t, dict(rec.winner), task.workload, compile=True)     # ahead-of-time build
        # num_warps and num_stages are launch options the interpreter ignores: one run serves them all
        key = (sha, tuple(sorted((k, v) for k, v in rec.winner.items() if k not in ("num_warps", "num_stages"))),
               task.workload.dtype)
        if sha is None or key not in _INTERPRETED:
            _INTERPRETED[key] = check_in_interpreter(task, rec.winner)
        return _INTERPRETED[key]
    from .measure import Bench
    bench = Bench(task, inputs=False)
    return bench.check(bench.prepare(rec.winner))


def verify_all(records: list[Record], *, check: bool = True, jobs: int = 1):
    """``verify`` of each record, in order (an iterator); with ``jobs`` > 1 in that many processes,
    each taking a contiguous run of records (records of one spec share their interpreter checks)."""
    if jobs <= 1 or len(records) < 2:
        for r in records:
            yield verify(r, check=check)
        return
    import concurrent.futures as cf
    import functools
    import multiprocessing as mp
    chunk = -(-len(records) // jobs)
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(functools.partial(verify, check=check), records, chunksize=chunk)
