"""Where candidates are built and measured: executors behind one interface.

``evaluate(task, configs, **how) -> [Outcome]`` with ``how`` the timing settings of
:func:`einattn.autotune.measure.evaluate`; ``worker`` names who measured (host and
fingerprint id), which a record keeps. :class:`LocalExecutor` measures in this
process (the default). The Ray executor (``ray_executor.py``, the ``ray`` extra)
spreads batches over a cluster. ``create(kind)`` makes one by name.
"""
from __future__ import annotations

import socket
from typing import Protocol

from einattn.ir import TuningError

from .measure import Bench, Outcome, Task, evaluate


class Executor(Protocol):
    name: str

    def evaluate(self, task: Task, configs: list[dict], **how) -> list[Outcome]: ...


class LocalExecutor:
    """Builds, checks and times in this process; inputs and the reference are made once per task.

    With ``jobs`` > 1 the kernels of each batch are first built in that many worker processes
    (spawned once, kept for the executor's life), which fill the disk cache the timing process
    then loads from; timing stays in this process, one candidate at a time. It helps where a
    build costs more than a worker's start (a TVM build is 0.5-2 s; a worker starts in 2-4 s).
    """
    name = "local"

    def __init__(self, jobs: int = 1):
        self._benches: dict[int, tuple[Task, Bench]] = {}
        self.jobs = jobs
        self._pool = None

    @property
    def worker(self) -> str:
        return socket.gethostname()

    def bench(self, task: Task) -> Bench:
        hit = self._benches.get(id(task))
        if hit is None or hit[0] is not task:
            self._benches = {id(task): (task, Bench(task))}     # one task at a time: free the last inputs
            hit = self._benches[id(task)]
        return hit[1]

    def evaluate(self, task: Task, configs: list[dict], **how) -> list[Outcome]:
        if self.jobs > 1 and len(configs) > 1:
            self.prebuild(task, configs)
        outs = evaluate(task, configs, bench=self.bench(task), **how)
        for o in outs:
            o.worker = self.worker
        return outs


    def prebuild(self, task: Task, configs: list[dict]) -> None:
        """Build ``configs`` in the worker processes; failures are left for ``evaluate`` to record."""
        import concurrent.futures as cf
        import multiprocessing as mp
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"))
        list(self._pool.map(_build_one, [task] * len(configs), configs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __del__(self):
        self.close()


_WORKER_BENCH: dict = {}


def _build_one(task: Task, config: dict) -> str:
    """In a worker: prepare ``config`` and run it on the small check input (building it into the
    disk cache). Returns "" or why it failed."""
    try:
        key = (task.cascade.structural_hash(), task.target, task.workload)
        bench = _WORKER_BENCH.get(key)
        if bench is None:
            _WORKER_BENCH.clear()
            bench = _WORKER_BENCH[key] = Bench(task, inputs=False)
        bench.check(bench.prepare(config))
        return ""
    except Exception as e:                   # recorded by evaluate in the timing process
        return f"{type(e).__name__}: {e}"


def create(kind: str = "local", **options) -> Executor:
    """``local`` (in this process; ``jobs=`` build processes) or ``ray`` (``address=`` a cluster,
    default: start a local one)."""
    if kind == "local":
        unknown = set(options) - {"jobs"}
        if unknown:
            raise TuningError(f"the local executor takes only jobs=, got {sorted(unknown)}")
        return LocalExecutor(**options)
    if kind == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(**options)
    raise TuningError(f"unknown executor {kind!r}; expected 'local' or 'ray'")
