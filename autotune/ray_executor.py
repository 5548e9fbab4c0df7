"""Spreading candidate builds and measurements over a Ray cluster (the ``ray`` extra).

One actor per device: by default one per alive node, holding all of its CPUs, so two
measurements never share a machine's cores (``actors=`` asks for a number instead,
e.g. on a local test instance). Batches of candidates go to whichever actor is idle
(``ray.wait``, not round-robin); a batch that runs past ``job_timeout_s`` or whose
actor dies is retried once on another actor, each candidate alone (a hung actor is
killed and replaced); a candidate that fails alone too is recorded as ``timeout`` /
``crash``: one bad
candidate costs one job (its batch-mates are retried alone), never the run. Actors report the fingerprint of their
machine; :meth:`RayExecutor.groups` splits the actors by it so a heterogeneous
cluster tunes each hardware kind for itself, and every record names the worker
that measured it. The driver alone writes the database. Ahead-of-time GPU builds
are CPU work and run on any actor.

Cluster use: ``ray start --head`` on one machine, ``ray start --address HEAD:6379``
on the others, then ``einattn tune SPEC ... --executor ray --address HEAD:6379``.
"""
from __future__ import annotations

import copy
import socket
import time

from einattn.ir import TuningError

from .measure import Outcome, Task

BATCH = 2          # candidates per job: interleaved on one actor, small enough to spread


class _Worker:
    """The actor: a local executor on one machine."""

    def __init__(self):
        from .executor import LocalExecutor
        self.local = LocalExecutor()
        self.host = socket.gethostname()

    def ready(self) -> str:
        """Import what a job needs, so that a job's timeout never counts the actor's start."""
        import torch  # noqa: F401

        from . import measure, tuner  # noqa: F401
        return self.host

    def fingerprint(self, target: str) -> dict:
        from einattn.backends import get_backend, parse_target

        from .key import einattn_version
        from .tuner import fingerprint
        t = parse_target(target)
        return {**fingerprint(get_backend(t), t), "einattn": einattn_version()}

    def evaluate(self, task: Task, configs: list[dict], how: dict) -> list[Outcome]:
        outs = self.local.evaluate(task, configs, **how)
        for o in outs:
            o.worker = f"{self.host} (ray)"
        return outs


class RayExecutor:
    """Dispatches batches of candidates to idle Ray actors; see the module docstring."""
    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None, cpus_per_actor: float | None = None,
                 job_timeout_s: float = 900.0, init: dict | None = None):
        try:
            import ray
        except ModuleNotFoundError:
            raise TuningError("--executor ray needs Ray: pip install 'einattn[ray]' (or pip install ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **(init or {}))
        self.job_timeout_s = job_timeout_s
        self._cls = ray.remote(_Worker)
        self.actors = self._start(actors, cpus_per_actor)
        ray.get([a.ready.remote() for a in self.actors])

    def _start(self, count, cpus):
        ray = self.ray
        if count is not None:
            total = ray.cluster_resources().get("CPU", 1)
            per = cpus or max(1.0, total // count)
            return [self._cls.options(num_cpus=per).remote() for _ in range(count)]
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        out = []
        for node in ray.nodes():
            if node.get("Alive"):
                n = cpus or node["Resources"].get("CPU", 1)
                out.append(self._cls.options(num_cpus=n, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node["NodeID"], soft=False)).remote())
        return out

    @property
    def worker(self) -> str:
        return "ray"

    def groups(self, target: str) -> list[tuple[dict, "RayExecutor"]]:
        """(fingerprint, executor over the actors of that fingerprint), one per hardware kind."""
        fps = self.ray.get([a.fingerprint.remote(target) for a in self.actors])
        by: dict = {}
        for a, fp in zip(self.actors, fps):
            by.setdefault(tuple(sorted(fp.items())), []).append(a)
        out = []
        for fp, actors in by.items():
            sub = copy.copy(self)            # the same cluster and settings, these actors only
            sub.actors = actors
            out.append((dict(fp), sub))
        return out

    def evaluate(self, task: Task, configs: list[dict], **how) -> list[Outcome]:
        ray = self.ray
        jobs = [configs[i:i + BATCH] for i in range(0, len(configs), BATCH)]
        queue = [(j, batch, 0, None) for j, batch in enumerate(jobs)]        # (job, configs, tries, last actor)
        results: dict[int, list[Outcome]] = {}
        idle = list(self.actors)
        running: dict = {}                                                    # ref -> (job, batch, tries, actor, t0)
        while queue or running:
            while queue and idle:
                j, batch, tries, last = queue.pop(0)
                actor = next((a for a in idle if a is not last), idle[0])
                idle.remove(actor)
                ref = actor.evaluate.remote(task, batch, how)
                running[ref] = (j, batch, tries, actor, time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                j, batch, tries, actor, _ = running.pop(ref)
                try:
                    got = ray.get(ref)
                    if isinstance(j, tuple):
                        results[j[0]][j[1]] = got[0]
                    else:
                        results[j] = got
                    idle.append(actor)
                except Exception as e:                                      # the actor died or raised
                    actor = self._replace(actor)
                    idle.append(actor)
                    self._retry_or_fail(queue, results, j, batch, tries, actor, "crash",
                                        f"the worker failed: {type(e).__name__}: {str(e)[:200]}")
            now = time.monotonic()
            for ref, (j, batch, tries, actor, t0) in list(running.items()):
                if now - t0 > self.job_timeout_s:
                    running.pop(ref)
                    fresh = self._replace(actor)               # killing the actor stops its task
                    idle.append(fresh)
                    self._retry_or_fail(queue, results, j, batch, tries, fresh, "timeout",
                                        f"the job ran past {self.job_timeout_s:g} s")
        return [o for j in range(len(jobs)) for o in results[j]]

    def _retry_or_fail(self, queue, results, j, batch, tries, actor, status, reason) -> None:
        """A failed job runs once more on another actor, each of its candidates alone (so the one
        that failed costs only itself); a candidate that fails alone a second time is recorded."""
        if tries == 0:
            results[j] = [None] * len(batch)
            for i, c in enumerate(batch):
                queue.append(((j, i), [c], 1, actor))
        else:
            j, i = j
            results[j][i] = Outcome(dict(batch[0]), status=status, reason=reason + " (twice)")

    def _replace(self, actor):
        """Kill an actor and start a new one with the same resources in its place."""
        try:
            self.ray.kill(actor)
        except Exception:
            pass
        new = self._cls.options(num_cpus=max(1.0, self.ray.cluster_resources().get("CPU", 1) // max(
            1, len(self.actors)))).remote()
        self.ray.get(new.ready.remote())
        self.actors = [new if a is actor else a for a in self.actors]
        return new
