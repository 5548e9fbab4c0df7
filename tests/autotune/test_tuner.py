"""The tuner with an injected clock (no real timing): winners, failing candidates, strategies,
pinned keys, the compile(tune=...) path and its cache hit. The streaming backend is tuned here
(BLOCK_N): nothing is compiled, so these run in seconds."""
from __future__ import annotations

import logging

import pytest
import torch

import einattn
from einattn.autotune import measure, tuner
from einattn.autotune.database import Database
from einattn.autotune.measure import Task
from einattn.autotune.tuner import lookup_or_tune, tune
from einattn.backends.base import Workload
from einattn.backends.torch.executors import StreamingBackend
from einattn.ir import TuningError

SHAPE = dict(b=1, h=2, m=24, n=200, d=16, e=16)


def task(spec="causal", target="streaming", shape=SHAPE, **kw) -> Task:
    return Task(einattn.load_spec(spec), target, Workload.of(shape), **kw)


def fake_clock(times: dict):
    """A timer that runs nothing and reports ``times[BLOCK_N]`` seconds (default 1 ms)."""
    def timer(fn, config):
        return times.get(config["BLOCK_N"], 1e-3)
    return timer


def by_config(rec):
    return {c["config"]["BLOCK_N"]: c for c in rec.candidates}


def test_the_fastest_candidate_wins_and_every_candidate_is_recorded(tmp_path):
    db = Database(tmp_path / "r.jsonl")
    rec = tune(task(), effort="quick", timer=fake_clock({32: 2e-4, 128: 5e-4}), db=db)
    assert rec.winner == {"BLOCK_N": 32} and rec.default == {"BLOCK_N": 64}
    assert rec.measured and rec.model is None and rec.strategy == "exhaustive"
    assert set(by_config(rec)) == {64, 16, 32, 128, 256} and all(c["status"] == "ok" for c in rec.candidates)
    assert rec.speedup == pytest.approx(5.0)
    assert db.lookup(rec.key) == rec


def test_a_candidate_must_beat_the_default_to_win(tmp_path):
    rec = tune(task(), effort="quick", timer=fake_clock({}), db=Database(tmp_path / "r.jsonl"))
    assert rec.winner == rec.default


def test_failing_candidates_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    space = StreamingBackend.space
    monkeypatch.setattr(StreamingBackend, "space", lambda self, p, t, w: space(self, p, t, w) + [{"BLOCK_N": 0}])
    launch = StreamingBackend.launch

    def flaky(self, artifact, inputs, sizes, params):
        block = artifact[1]
        if block == 16:
            raise RuntimeError("boom")
        out = launch(self, artifact, inputs, sizes, params)
        return {k: v + 1 for k, v in out.items()} if block == 32 else out

    monkeypatch.setattr(StreamingBackend, "launch", flaky)
    rec = tune(task(), effort="quick", timer=fake_clock({128: 10.0, 256: 1e-4}), db=Database(tmp_path / "r.jsonl"),
               timeout_s=5.0)
    c = by_config(rec)
    assert c[0]["status"] == "invalid" and "BLOCK_N" in c[0]["reason"]
    assert c[16]["status"] == "crash" and "boom" in c[16]["reason"]
    assert c[32]["status"] == "inaccurate" and "relative error" in c[32]["reason"]
    assert c[128]["status"] == "timeout"
    assert rec.winner == {"BLOCK_N": 256}


def test_no_candidate_working_is_a_tuning_error(tmp_path, monkeypatch):
    monkeypatch.setattr(StreamingBackend, "launch", lambda *a: (_ for _ in ()).throw(RuntimeError("never")))
    with pytest.raises(TuningError, match="no candidate.*never"):
        tune(task(), effort="quick", timer=fake_clock({}), db=Database(tmp_path / "r.jsonl"))


def test_timing_interleaves_candidates_and_takes_the_median(tmp_path):
    calls = []

    def timer(fn, config):
        calls.append(config["BLOCK_N"])
        return 1e-3
    measure.evaluate(task(), [{"BLOCK_N": 16}, {"BLOCK_N": 64}], timer=timer, warmup=1, repeats=3)
    assert calls[:2] == [16, 64]              # the uncounted first call each (builds)
    assert calls[2:] == [16, 64] * 4          # warm-up and timed rounds, interleaved


def test_pinned_keys_narrow_the_space(tmp_path):
    rec = tune(task(), effort="quick", pinned={"BLOCK_N": 128}, timer=fake_clock({}),
               db=Database(tmp_path / "r.jsonl"))
    assert [c["config"] for c in rec.candidates] == [{"BLOCK_N": 128}]
    with pytest.raises(TuningError, match="not a tunable"):
        tune(task(), effort="quick", pinned={"BLOCK_M": 16}, db=Database(tmp_path / "r.jsonl"))


def test_model_guided_search_for_large_spaces(tmp_path, monkeypatch):
    blocks = [16 * k for k in range(1, 41)]
    monkeypatch.setattr(StreamingBackend, "space", lambda self, p, t, w: [{"BLOCK_N": 64}] +
                        [{"BLOCK_N": b} for b in blocks if b != 64])
    times = {b: 1e-3 * (1 + abs(b - 400) / 100) for b in blocks}
    rec = tune(task(), effort="quick", timer=fake_clock(times), db=Database(tmp_path / "r.jsonl"))
    limit = tuner.EFFORT["quick"][1]
    assert rec.strategy == "optuna-tpe" and len(rec.candidates) <= limit
    assert rec.candidates[0]["config"] == {"BLOCK_N": 64}            # the default is measured first
    assert rec.ms < times[64] * 1e3


def test_efforts_and_untunable_targets(tmp_path):
    with pytest.raises(TuningError, match="expected one of"):
        einattn.compile("softmax", target="streaming", tune="fast")
    with pytest.raises(TuningError, match="nothing to tune"):
        einattn.compile("softmax", target="reference", tune="quick")
    with pytest.raises(TuningError, match="measures nothing"):
        tune(task(), effort="none")


def test_compile_tunes_on_a_miss_and_hits_the_database_after(monkeypatch, caplog):
    monkeypatch.setattr(measure, "wall_clock", fake_clock({128: 1e-4}))
    k = einattn.compile("causal", target="streaming", tune="quick")
    x = einattn.backends.torch.check.random_inputs(k.spec, SHAPE | {"n": 190}, torch.float32)
    with caplog.at_level(logging.WARNING, logger="einattn.autotune"):
        out = k(**x)
    lines = [r for r in caplog.records if r.name == "einattn.autotune"]
    assert len(lines) == 1 and "tuning it now" in lines[0].getMessage()
    assert list(k.tuned_configs().values()) == [{"BLOCK_N": 128}]
    ref = einattn.compile("causal", target="reference")(**x)
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(tuner, "tune", lambda *a, **kw: pytest.fail("a hit must not tune"))
    k2 = einattn.compile("causal", target="streaming", tune="quick")
    caplog.clear()
    k2(**einattn.backends.torch.check.random_inputs(k.spec, SHAPE, torch.float32))     # n=200: same bucket
    assert list(k2.tuned_configs().values()) == [{"BLOCK_N": 128}]
    assert not [r for r in caplog.records if r.name == "einattn.autotune"]


def test_lookup_falls_back_to_the_shipped_records(tmp_path, monkeypatch):
    t = task()
    rec = tune(t, effort="quick", timer=fake_clock({256: 1e-5}), db=Database(tmp_path / "shipped.jsonl"))
    from einattn.autotune import database
    monkeypatch.setattr(database, "shipped", lambda: [Database(tmp_path / "shipped.jsonl", readonly=True)])
    monkeypatch.setattr(tuner, "tune", lambda *a, **kw: pytest.fail("the shipped record must be used"))
    assert lookup_or_tune(t, "quick", db=Database(tmp_path / "user.jsonl")).winner == rec.winner


def test_builds_in_worker_processes_then_times_here(tmp_path):
    from einattn.autotune.executor import LocalExecutor
    ex = LocalExecutor(jobs=2)
    try:
        rec = tune(task(), effort="quick", executor=ex, timer=fake_clock({128: 1e-4}),
                   db=Database(tmp_path / "r.jsonl"))
    finally:
        ex.close()
    assert rec.winner == {"BLOCK_N": 128} and all(c["status"] == "ok" for c in rec.candidates)
