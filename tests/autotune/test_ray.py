"""The Ray executor on a local Ray instance (ray.init(num_cpus=2)): dynamic dispatch to two actors,
a crashing and a hanging candidate each cost one job (retried once on another actor), the driver
writes the records."""
from __future__ import annotations

import os
import time

import pytest

ray = pytest.importorskip("ray")

import einattn  # noqa: E402
from einattn.autotune.database import Database  # noqa: E402
from einattn.autotune.measure import Task  # noqa: E402
from einattn.autotune.tuner import tune_each  # noqa: E402
from einattn.backends.base import Workload  # noqa: E402


@pytest.fixture(scope="module")
def executor():
    from einattn.autotune.ray_executor import RayExecutor
    ex = RayExecutor(actors=2, cpus_per_actor=1, job_timeout_s=10,
                     init={"num_cpus": 2, "runtime_env": {"env_vars": {"RAY_DEDUP_LOGS": "0"}}})
    yield ex
    ray.shutdown()


def timer(fn, config):
    if config["BLOCK_N"] == 16:
        os._exit(3)                   # the worker process dies
    if config["BLOCK_N"] == 32:
        time.sleep(60)                # hangs past the job timeout
    return 1e-3 / config["BLOCK_N"]


def test_ray_tunes_with_failures_costing_one_job(executor, tmp_path):
    task = Task(einattn.load_spec("causal"), "streaming", Workload.of(dict(b=1, h=2, m=24, n=300, d=16, e=16)))
    db = Database(tmp_path / "r.jsonl")
    recs = tune_each(task, executor, effort="full", timer=timer, db=db, repeats=2)   # quick's 30 s go on the timeouts
    assert len(recs) == 1
    c = {x["config"]["BLOCK_N"]: x for x in recs[0].candidates}
    assert c[16]["status"] == "crash" and "twice" in c[16]["reason"]
    assert c[32]["status"] == "timeout" and "twice" in c[32]["reason"]
    assert c[64]["status"] == "ok" and "(ray)" in c[64]["worker"]
    assert recs[0].winner == {"BLOCK_N": 256}, recs[0].candidates
    assert db.lookup(recs[0].key) == recs[0]
