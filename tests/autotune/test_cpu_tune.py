"""A real quick tune of a small workload on the CPU, end to end (real builds, real clock; no
assertion on times), and a GPU target ranked by the model without a GPU."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.autotune.database import Database
from einattn.autotune.measure import Task
from einattn.autotune.tuner import tune
from einattn.autotune.verify import verify
from einattn.backends.base import Workload
from einattn.backends.torch.check import random_inputs, rel_error

pytestmark = pytest.mark.cpu


def test_real_quick_tune_on_the_cpu_then_compile_hits_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EINATTN_CACHE_DIR", str(tmp_path))
    shape = dict(b=1, h=1, m=8, n=600, d=16, e=16)
    task = Task(einattn.load_spec("softmax"), "cpu", Workload.of(shape))
    rec = tune(task, effort="quick", repeats=2)
    assert rec.measured and rec.ms > 0 and rec.default_ms > 0 and rec.source_sha
    statuses = {c["status"] for c in rec.candidates}
    assert "ok" in statuses and statuses <= {"ok", "invalid", "build_error", "crash", "timeout", "inaccurate"}
    assert any(c["config"].get("KV_SPLITS", 1) > 1 for c in rec.candidates)      # decoding shape: splits tried
    assert Database().lookup(rec.key) == rec
    assert verify(rec).status == "ok"
    from einattn.autotune import tuner
    monkeypatch.setattr(tuner, "tune", lambda *a, **kw: pytest.fail("the record must be hit"))
    k = einattn.compile("softmax", target="cpu", tune="quick")
    x = random_inputs(k.spec, shape, torch.float32)
    out = k(**x)
    assert list(k.tuned_configs().values()) == [rec.winner]
    want = einattn.compile("softmax", target="reference")(**x)
    assert rel_error(out, want) < 1e-4


def test_gpu_target_without_a_gpu_is_ranked_by_the_model(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: it is measured")
    task = Task(einattn.load_spec("softmax"), "cuda:sm_90", Workload.of(dict(b=1, h=2, m=16, n=512, d=16, e=16),
                                                                        "float16"))
    rec = tune(task, effort="quick", db=Database(tmp_path / "r.jsonl"))
    assert not rec.measured and rec.model.startswith("roofline")
    assert rec.key.fingerprint_id and dict(rec.key.fingerprint)["arch"] == "sm_90"
    ok = [c for c in rec.candidates if c["status"] == "ok"]
    assert ok and rec.winner in [c["config"] for c in ok]
    assert rec.ms == pytest.approx(min(c["ms"] for c in ok), rel=1e-3)
    assert all(c["status"] in ("ok", "not_measured", "invalid", "inaccurate", "build_error") for c in rec.candidates)
