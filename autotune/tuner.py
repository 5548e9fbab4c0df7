"""Tuning one workload: search space -> strategy -> executor -> record -> database.

:func:`tune` asks the target's backend for its pruned search space
(``space(plan, target, workload)``, default config first), keeps the candidates
that agree with pinned keys, and then either

- measures (the CPU, or a GPU that is present): a strategy (exhaustive for small
  spaces, optuna's TPE for larger ones: ``strategy.choose``) proposes batches that the
  executor builds, checks against the float64 reference and times, until the
  strategy is done or the effort's wall budget is spent; the best three and the
  default are then measured again side by side (at least 7 rounds), and a candidate
  must beat the default by ``MARGIN`` (3%) in the median of its per-round ratios to
  the default to win; or
- ranks by a model (a GPU target on a machine without that GPU): every candidate
  is scored by the backend's roofline and occupancy model from the plan's resource
  estimates, the best few are compiled ahead of time and scored again with the
  compiled kernel's shared memory and registers, and the winner is checked in
  Triton's interpreter. The record says ``measured: false`` and names the model.

Efforts: ``none`` (the backend's default config, nothing measured: not a tune),
``quick`` (at most about 30 s per workload on a 2-core CPU) and ``full``.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import statistics
import time

from einattn.backends import get_backend, parse_target
from einattn.backends.base import Workload
from einattn.compiler import make_kernel_plan, make_plan
from einattn.ir import TuningError, UnsupportedError

from .database import Database, Record, lookup
from .executor import Executor, LocalExecutor
from .key import TuningKey, einattn_version, machine_name, shape_bucket
from .measure import Outcome, Task
from .strategy import EFFORT, choose, config_id, create

log = logging.getLogger("einattn.autotune")

EFFORTS = ("none", "quick", "full")
TOP = 3                 # candidates measured again beside the default before choosing
BATCH = 4               # candidates proposed, built and timed (interleaved) together
MARGIN = 0.03           # a candidate must beat the default by this share in the final round to win
MODEL_TOP = {"quick": 4, "full": 12}     # model-ranked candidates compiled ahead of time


def check_effort(effort: str) -> None:
    if effort not in EFFORTS:
        raise TuningError(f"unknown tuning effort {effort!r}; expected one of {', '.join(EFFORTS)}")


def tuning_key(task: Task, plan=None, kp=None, fp: dict | None = None) -> TuningKey:
    """The key a record of ``task`` is stored and found under."""
    t = parse_target(task.target)
    backend = get_backend(t)
    plan = plan or make_plan(task.cascade)
    kp = kp or make_kernel_plan(plan)
    from einattn.ir import eval_params
    params = eval_params(task.cascade, task.workload.as_dict(), dict(task.params))
    fp = fp or {**fingerprint(backend, t), "einattn": einattn_version()}
    return TuningKey.make(plan.cascade.structural_hash(), shape_bucket(kp, task.workload, params),
                          task.workload.dtype, str(t), fp)


def fingerprint(backend, target) -> dict:
    fn = getattr(backend, "fingerprint", None)
    if fn is None:
        raise TuningError(f"target '{target}' has nothing to tune (the {backend.name} backend declares no "
                          f"search space); tunable targets: cpu, cuda, rocm, streaming")
    return fn(target)


def search_space(task: Task, plan, pinned: dict | None = None) -> tuple[list[dict], dict]:
    """(candidates, default): the backend's pruned space, narrowed to the pinned keys."""
    t = parse_target(task.target)
    backend = get_backend(t)
    if getattr(backend, "space", None) is None:
        fingerprint(backend, t)                 # raises the "nothing to tune" error
    space = [dict(c) for c in backend.space(plan, t, task.workload)]
    default = dict(backend.default_config(plan, t, task.workload))
    if pinned:
        unknown = [k for k in pinned if k not in default]
        if unknown:
            raise TuningError(f"config key {unknown[0]!r} is not a tunable of target '{t}'; its keys: "
                              f"{', '.join(default)}")
        default = {**default, **pinned}
        space = [c for c in space if all(c.get(k) == v for k, v in pinned.items())]
    ids = [config_id(c) for c in space]
    if config_id(default) in ids:
        space.pop(ids.index(config_id(default)))
    return [default, *space], default


def gpu_present(target) -> bool:
    import torch
    if not torch.cuda.is_available():
        return False
    hip = getattr(torch.version, "hip", None)
    return (target.kind == "rocm") == bool(hip)


def tune(task: Task, *, effort: str = "quick", pinned: dict | None = None, executor: Executor | None = None,
         timer=None, db: Database | None = None, progress=None, store: bool = True,
         strategy: str | None = None, repeats: int = 5, timeout_s: float = 60.0,
         fp: dict | None = None) -> Record:
    """Tune one workload and (with ``store``) append its record to ``db``.

    ``progress(done, total, outcome)`` is called after each candidate; ``timer`` replaces the
    wall clock (``measure.wall_clock``); ``strategy`` forces ``exhaustive`` or ``optuna``; ``fp`` is
    the fingerprint of the machines the executor measures on (default: this one's).
    """
    check_effort(effort)
    if effort == "none":
        raise TuningError("effort 'none' measures nothing: it is the default config; use 'quick' or 'full'")
    t0 = time.perf_counter()
    t = parse_target(task.target)
    plan = make_plan(task.cascade)
    kp = make_kernel_plan(plan)
    key = tuning_key(task, plan, kp, fp)
    space, default = search_space(task, plan, pinned)
    if not space:
        raise TuningError(f"no config of target '{t}' fits this workload with {pinned}")
    if t.kind in ("cuda", "rocm") and not gpu_present(t):
        outs, winner, default_out, how = rank_by_model(task, plan, space, default, effort, progress)
        estimated = len(outs)
        outs = kept_candidates(outs, winner, default_out)
        measured, model = False, how
        strat = f"model:{how}"
    else:
        executor = executor or LocalExecutor()
        outs, winner, default_out, strat = measure_space(task, space, default, effort, executor, timer,
                                                         progress, strategy, repeats, timeout_s, t0)
        measured, model = True, None
    if winner is None:
        reasons = "; ".join(f"{o.status}: {o.reason[:120]}" for o in outs[:3])
        raise TuningError(f"no candidate of '{task.cascade.name}' on '{t}' built, ran and matched the reference "
                          f"({len(outs)} tried; first: {reasons})")
    rec = Record(key=key, spec_name=task.cascade.name, workload=task.workload.as_dict(), winner=winner.config,
                 ms=winner.ms, gflops=winner.gflops, default=default,
                 default_ms=default_out.ms if default_out else None, measured=measured, model=model,
                 effort=effort, strategy=strat, candidates=tuple(o.to_json() for o in outs),
                 worker=getattr(executor, "worker", "") if measured else "model",
                 tuned_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 wall_s=round(time.perf_counter() - t0, 3),
                 source_sha=source_sha(task, plan, winner.config),
                 extra={**({"estimated_only_dropped": estimated - len(outs)} if not measured else {}),
                        "spec_file": str(getattr(task.cascade, "file", "") or ""),
                        "params": dict(task.params), **({"machine": machine_name()} if measured else {})})
    if store:
        (db or Database()).append(rec)
    return rec


def tune_each(task: Task, executor: Executor, **how) -> list[Record]:
    """One record per hardware kind of the executor's workers (``RayExecutor.groups``), each keyed by
    the fingerprint of the machines that measured it; a local executor gives one."""
    t = parse_target(task.target)
    groups = executor.groups(task.target) if hasattr(executor, "groups") and t.kind == "cpu" else [(None, executor)]
    return [tune(task, executor=ex, fp=fp, **how) for fp, ex in groups]


def source_sha(task: Task, plan, config: dict) -> str | None:
    """sha256 (16 hex digits) of the winner's generated kernel source, when the backend can say."""
    t = parse_target(task.target)
    fn = getattr(get_backend(t), "kernel_source", None)
    if fn is None:
        return None
    src = fn(plan, t, dict(config), task.workload)
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def measure_space(task, space, default, effort, executor, timer, progress, strategy, repeats, timeout_s, t0):
    kind, limit = choose(space, effort)
    strat = create(strategy or kind, space, limit if not strategy else len(space))
    budget = EFFORT[effort][2]
    how = dict(timer=timer, repeats=repeats, timeout_s=timeout_s)
    done: dict[tuple, Outcome] = {}
    total = min(limit, len(space))
    final_repeats = max(repeats, 7) if effort == "quick" else max(2 * repeats, 10)
    while True:
        if done and not within_budget(done, t0, budget, final_repeats):
            log.info("einattn: tuning budget of %gs spent after %d candidates", budget, len(done))
            break
        batch = strat.ask(BATCH)
        if not batch:
            break
        outs = executor.evaluate(task, batch, **how)
        strat.tell(outs)
        for o in outs:
            done[config_id(o.config)] = o
            if progress:
                progress(len(done), total, o)
    ok = sorted((o for o in done.values() if o.status == "ok"), key=lambda o: o.ms)
    if not ok:
        return list(done.values()), None, done.get(config_id(default)), strat.name
    # the best few again, beside the default, with more samples
    again = [o.config for o in ok[:TOP]]
    if config_id(default) not in {config_id(c) for c in again} and done.get(config_id(default)) and \
            done[config_id(default)].status == "ok":
        again.append(default)
    final = {config_id(o.config): o for o in executor.evaluate(task, again, **{**how, "repeats": final_repeats})}
    for cid, o in final.items():
        done[cid].again = True
        if o.status == "ok":
            done[cid].ms, done[cid].gflops, done[cid].samples = o.ms, o.gflops, o.samples
        else:
            done[cid].status, done[cid].reason = o.status, o.reason
    ok = sorted((o for o in (done[c] for c in final) if o.status == "ok"), key=lambda o: o.ms)
    d = done.get(config_id(default))
    winner = ok[0] if ok else None
    if winner is not None and d is not None and d.status == "ok" and d in ok:
        # round by round against the default (a slow phase of the machine hits both alike)
        ratio = {config_id(o.config): paired_ratio(o.samples, d.samples) for o in ok if o is not d}
        best = min(ratio, key=ratio.get, default=None)
        winner = done[best] if best is not None and ratio[best] < 1 - MARGIN else d
        for cid, r in ratio.items():
            done[cid].vs_default = r
    return list(done.values()), winner, d, strat.name


def paired_ratio(samples: list, default: list) -> float:
    """Median over the rounds of (candidate time / default time in the same round)."""
    pairs = [a / b for a, b in zip(samples, default) if b > 0]
    return statistics.median(pairs) if pairs else float("inf")


def within_budget(done: dict, t0: float, budget: float, final_repeats: int) -> bool:
    """Whether one more batch and the final re-measurement fit in what is left of ``budget``, from
    the mean cost of a candidate so far and the slowest call among the working ones."""
    spent = time.perf_counter() - t0
    per = spent / len(done)
    calls = [o.ms for o in done.values() if o.status == "ok" and o.ms]
    final = (TOP + 1) * (final_repeats + 3) * (max(calls) if calls else 0.0) / 1e3
    return spent + BATCH * per + final <= budget


def rank_by_model(task, plan, space, default, effort, progress):
    """Rank GPU configs by the backend's model; compile the best few; check the winner in the interpreter."""
    t = parse_target(task.target)
    backend = get_backend(t)
    scored = []
    for cfg in space:
        o = Outcome(dict(cfg), status="not_measured")
        try:
            pred = backend.model_time(plan, t, dict(cfg), task.workload, compile=False)
            o.ms, o.reason = pred["seconds"] * 1e3, f"estimated: {pred['model']}"
        except UnsupportedError as e:
            o.status, o.reason = "invalid", str(e)
        scored.append(o)
    est = sorted((o for o in scored if o.ms is not None), key=lambda o: o.ms)
    top = est[:MODEL_TOP[effort]]
    if config_id(default) not in {config_id(o.config) for o in top}:
        top += [o for o in scored if config_id(o.config) == config_id(default)]
    name = None
    for i, o in enumerate(top):
        try:
            pred = backend.model_time(plan, t, dict(o.config), task.workload, compile=True)
            o.status, o.ms, o.reason, name = "ok", pred["seconds"] * 1e3, "", pred["model"]
            o.gflops = pred["flops"] / pred["seconds"] / 1e9 if pred.get("flops") and pred["seconds"] > 0 else None
        except UnsupportedError as e:
            o.status, o.reason = "invalid", str(e)
        except Exception as e:
            o.status, o.reason = "build_error", f"{type(e).__name__}: {e}"
        if progress:
            progress(i + 1, len(top), o)
    ok = sorted((o for o in top if o.status == "ok"), key=lambda o: o.ms)
    d = next((o for o in scored if config_id(o.config) == config_id(default)), None)
    winner = None
    for o in ok:                                  # the first that the interpreter confirms
        try:
            o.error = check_in_interpreter(task, o.config)
        except Exception as e:                    # a candidate that crashes costs itself only
            o.status, o.reason = "crash", f"in Triton's interpreter: {type(e).__name__}: {str(e)[:200]}"
            continue
        if o.error <= 2e-2:
            winner = o
            break
        o.status, o.reason = "inaccurate", f"relative error {o.error:.3g} in Triton's interpreter"
    return scored, winner, d, name or "model"


def kept_candidates(outs: list, winner, default, extra: int = 12) -> list:
    """A model-ranked record keeps the compiled candidates, the default and the next ``extra``
    best estimates (each record would otherwise carry every estimate of a space of hundreds)."""
    compiled = [o for o in outs if o.status != "not_measured"]
    est = sorted((o for o in outs if o.status == "not_measured" and o.ms is not None), key=lambda o: o.ms)
    keep = {id(o) for o in compiled + est[:extra]} | {id(x) for x in (winner, default) if x is not None}
    return [o for o in outs if id(o) in keep]


def check_in_interpreter(task: Task, config: dict) -> float:
    """Relative error of ``config`` against the reference on the small check input, interpreted."""
    import dataclasses

    from .measure import Bench
    small = dataclasses.replace(task, interpret=True, workload=Workload.of(
        {**task.workload.as_dict()}, "float32"))
    bench = Bench(small, inputs=False)
    return bench.check(bench.prepare(config))


def lookup_or_tune(task: Task, effort: str, *, pinned: dict | None = None, db: Database | None = None) -> Record:
    """The record of ``task``'s key (the user's database, then the shipped records), or a new tune.
    A model-ranked record (``measured: false``) is not used where its GPU is present: that GPU is
    measured instead."""
    key = tuning_key(task)
    rec = lookup(key, db)
    if rec is not None and not rec.measured and gpu_present(parse_target(task.target)):
        rec = None                        # a model's ranking is for machines without the GPU: measure here
    if rec is not None and (not pinned or all(rec.winner.get(k) == v for k, v in pinned.items())):
        return rec
    log.warning("einattn: no tuning record of %s on %s for the shape bucket %s: tuning it now (effort %s%s); "
                "the record goes to %s", task.cascade.name, task.target, dict(key.bucket), effort,
                ", about 30 s" if effort == "quick" else "", (db or Database()).path)
    rec = tune(task, effort=effort, pinned=pinned, db=db)
    log.info("einattn: tuned %s in %.1fs: %s (%s ms; default %s ms), stored in %s", task.cascade.name,
                rec.wall_s, rec.winner, _fmt(rec.ms), _fmt(rec.default_ms), (db or Database()).path)
    return rec


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"
