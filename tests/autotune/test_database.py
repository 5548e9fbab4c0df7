"""The tuning database: round trips, newest wins, corrupt and partial lines, concurrent writers."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp

import pytest

from einattn.autotune.database import Database, Record
from einattn.autotune.key import TuningKey, pow2_ceil, shape_bucket
from einattn.backends.base import Workload
from einattn.compiler import make_kernel_plan, make_plan
import einattn


def make_record(i: int, ms: float = 1.0, spec: str = "abc") -> Record:
    key = TuningKey.make(spec, {"query": 64, "key": 1024, "programs": 8, "d": 64, "e": i}, "float32", "cpu",
                         {"host": "x86_64/znver5/v512", "cores": 2})
    return Record(key=key, spec_name="softmax", workload={"m": 64, "n": 1000}, winner={"BLOCK_N": 64 + i},
                  ms=ms, gflops=10.0, default={"BLOCK_N": 64}, default_ms=2.0, measured=True, model=None,
                  effort="quick", strategy="exhaustive", candidates=({"config": {"BLOCK_N": 64}, "status": "ok"},))


def test_round_trip_and_newest_wins(tmp_path):
    db = Database(tmp_path / "r.jsonl")
    db.append(make_record(1, ms=3.0))
    db.append(make_record(2), make_record(1, ms=1.5))
    assert [r.ms for r in db.records()] == [3.0, 1.0, 1.5]
    assert db.lookup(make_record(1).key).ms == 1.5
    assert db.lookup(make_record(3).key) is None
    assert len(db.latest()) == 2
    assert db.find(make_record(2).id[:6])[0].winner == {"BLOCK_N": 66}


def test_corrupt_lines_skipped_with_one_warning(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    db = Database(p)
    db.append(make_record(1))
    with open(p, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"version": 1, "key": {"spec": "x"}}) + "\n")      # a record without its fields
        f.write("[1, 2]\n")
    db.append(make_record(2))
    with caplog.at_level(logging.WARNING, logger="einattn.autotune"):
        recs = Database(p).records()
    assert [r.key.bucket for r in recs] == [make_record(1).key.bucket, make_record(2).key.bucket]
    warns = [r for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warns) == 1 and "3 corrupt line(s)" in warns[0].getMessage() and str(p) in warns[0].getMessage()


def test_partial_last_line_is_not_a_record_and_the_next_append_keeps_it_apart(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    db = Database(p)
    db.append(make_record(1))
    with open(p, "a") as f:
        f.write(json.dumps(make_record(2).to_json())[:40])           # a writer died mid-line
    with caplog.at_level(logging.WARNING, logger="einattn.autotune"):
        assert len(Database(p).records()) == 1
    assert not caplog.records                                        # in progress, not corrupt
    db.append(make_record(3))
    recs = Database(p).records()                                     # the torn line is now one bad line
    assert [r.winner["BLOCK_N"] for r in recs] == [65, 67]


def test_unreadable_database_warns_and_finds_nothing(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    p.mkdir()                                                        # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="einattn.autotune"):
        assert Database(p).records() == []


def _writer(path: str, start: int, n: int) -> None:
    db = Database(path)
    for i in range(start, start + n):
        db.append(make_record(i, spec=f"s{i}"))


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    p = str(tmp_path / "r.jsonl")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(p, k * 1000, 60)) for k in range(2)]
    for q in procs:
        q.start()
    for q in procs:
        q.join(120)
        assert q.exitcode == 0
    recs = Database(p).records()
    assert sorted(r.key.spec for r in recs) == sorted(f"s{i}" for k in range(2) for i in range(k * 1000, k * 1000 + 60))


def test_shipped_database_is_read_only(tmp_path):
    db = Database(tmp_path / "r.jsonl", readonly=True)
    with pytest.raises(PermissionError):
        db.append(make_record(1))


@pytest.mark.parametrize("sizes, want", [
    (dict(b=1, h=8, m=1, n=8192, d=64, e=64), {"query": 1, "key": 8192, "programs": 8, "d": 64, "e": 64}),
    (dict(b=2, h=3, m=77, n=1000, d=64, e=32), {"query": 128, "key": 1024, "programs": 8, "d": 64, "e": 32}),
    (dict(b=1, h=1, m=513, n=513, d=128, e=128), {"query": 1024, "key": 1024, "programs": 1, "d": 128, "e": 128}),
])
def test_shape_bucket(sizes, want):
    kp = make_kernel_plan(make_plan(einattn.load_spec("softmax")))
    assert shape_bucket(kp, Workload.of(sizes)) == want


def test_shape_bucket_keeps_the_head_ratio_exact():
    c = einattn.load_spec("gqa")
    kp = make_kernel_plan(make_plan(c))
    from einattn.ir import eval_params
    sizes = dict(b=1, h=8, g=2, m=16, n=64, d=16, e=16)
    b = shape_bucket(kp, Workload.of(sizes), eval_params(c, sizes, {}))
    assert b["param:r"] == 4 and b["programs"] == 8
    b2 = shape_bucket(kp, Workload.of({**sizes, "g": 8}), eval_params(c, {**sizes, "g": 8}, {}))
    assert b2["param:r"] == 1          # MQA vs GQA: another bucket


def test_pow2_ceil():
    assert [pow2_ceil(x) for x in (0, 1, 2, 3, 8, 9, 8192)] == [1, 1, 2, 4, 8, 16, 8192]


def test_key_id_is_stable_and_field_sensitive():
    a, b = make_record(1).key, make_record(1).key
    assert a.id == b.id and len(a.id) == 12
    assert TuningKey.from_json(a.to_json()) == a
    other = TuningKey.make(a.spec, dict(a.bucket), "float16", a.target, dict(a.fingerprint))
    assert other.id != a.id
