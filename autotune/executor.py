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
    """Builds, checks and times in this process; inputs and the reference are made once per task."""
    name = "local"

    def __init__(self):
        self._benches: dict[int, tuple[Task, Bench]] = {}

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
        outs = evaluate(task, configs, bench=self.bench(task), **how)
        for o in outs:
            o.worker = self.worker
        return outs


def create(kind: str = "local", **options) -> Executor:
    """``local`` (in this process) or ``ray`` (``address=`` a cluster, default: start a local one)."""
    if kind == "local":
        if options:
            raise TuningError(f"the local executor takes no options, got {sorted(options)}")
        return LocalExecutor()
    if kind == "ray":
        from .ray_executor import RayExecutor
        return RayExecutor(**options)
    raise TuningError(f"unknown executor {kind!r}; expected 'local' or 'ray'")
