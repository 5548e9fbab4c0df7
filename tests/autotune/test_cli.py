"""einattn tune and einattn cache, end to end through the CLI (streaming target: nothing compiled)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from einattn.autotune.database import Database, Record
from einattn.autotune.key import TuningKey
from einattn.cli import main

SHAPE = "b=1,h=2,m=24,n=200,d=16,e=16"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EINATTN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tune_prints_the_table_and_stores_the_record(cache, capsys):
    assert main(["tune", "causal", "--target", "streaming", "--shape", SHAPE, "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "config" in out and "GFLOP/s" in out and "status" in out
    assert "winner: BLOCK_N=" in out and "the default" in out and "measured" in out
    rec = Database(cache / "tuning" / "records.jsonl").records()
    assert len(rec) == 1 and rec[0].id in out
    assert main(["tune", "causal", "--target", "streaming", "--shape", SHAPE, "--if-missing"]) == 0
    assert f"found {rec[0].id}: not tuned again" in capsys.readouterr().out
    assert len(Database(cache / "tuning" / "records.jsonl").records()) == 1


def test_cache_list_show_export_import_verify_clear(cache, capsys, tmp_path):
    assert main(["tune", "softmax", "--target", "streaming", "--shape", SHAPE, "--repeats", "2"]) == 0
    rid = Database(cache / "tuning" / "records.jsonl").records()[0].id
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    assert rid in capsys.readouterr().out
    assert main(["cache", "show", rid[:5]]) == 0
    shown = capsys.readouterr().out
    assert '"winner"' in shown and '"candidates"' in shown
    assert main(["cache", "verify", "--user"]) == 0
    assert "OK" in capsys.readouterr().out
    bundle = tmp_path / "records.tar.gz"
    assert main(["cache", "export", str(bundle)]) == 0
    assert main(["cache", "clear"]) == 0
    assert Database(cache / "tuning" / "records.jsonl").records() == []
    assert main(["cache", "import", str(bundle)]) == 0
    assert [r.id for r in Database(cache / "tuning" / "records.jsonl").records()] == [rid]
    assert main(["cache", "import", str(bundle)]) == 0              # importing twice adds nothing
    assert len(Database(cache / "tuning" / "records.jsonl").records()) == 1


def test_import_refuses_records_of_another_machine(cache, capsys, tmp_path):
    assert main(["tune", "softmax", "--target", "streaming", "--shape", SHAPE, "--repeats", "2"]) == 0
    rec = Database(cache / "tuning" / "records.jsonl").records()[0]
    fp = dict(rec.key.fingerprint) | {"torch": "1.0.0"}
    other = dataclasses.replace(rec, key=TuningKey.make(rec.key.spec, dict(rec.key.bucket), rec.key.dtype,
                                                        rec.key.target, fp))
    f = tmp_path / "other.jsonl"
    f.write_text(json.dumps(other.to_json()) + "\n")
    capsys.readouterr()
    assert main(["cache", "import", str(f)]) == 0
    err = capsys.readouterr().err
    assert "refused" in err and "torch: '1.0.0' (record)" in err


def test_verify_names_stale_records_and_exits_1(cache, capsys, tmp_path):
    assert main(["tune", "softmax", "--target", "streaming", "--shape", SHAPE, "--repeats", "2"]) == 0
    rec = Database(cache / "tuning" / "records.jsonl").records()[0]
    stale_tool = dataclasses.replace(rec, key=TuningKey.make(rec.key.spec, dict(rec.key.bucket), rec.key.dtype,
                                                             rec.key.target, dict(rec.key.fingerprint) | {"torch": "0.1"}))
    stale_spec = dataclasses.replace(rec, key=TuningKey.make("0" * 16, dict(rec.key.bucket), rec.key.dtype,
                                                             rec.key.target, dict(rec.key.fingerprint)))
    f = tmp_path / "recs.jsonl"
    f.write_text("".join(json.dumps(r.to_json()) + "\n" for r in (rec, stale_tool, stale_spec)))
    capsys.readouterr()
    assert main(["cache", "verify", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK") and out[1].startswith("STALE") and "toolchain changed: torch" in out[1]
    assert out[2].startswith("STALE") and "another cascade" in out[2]
    assert "2 stale or failed" in out[-1]


def test_shipped_records_verify(capsys):
    """The records shipped with einattn are current: their kernels generate the same source today,
    compile and match the reference (records of another machine are skipped)."""
    from einattn.autotune.database import shipped
    if not shipped():
        pytest.skip("no shipped records")
    assert main(["cache", "verify", "--no-check"]) == 0, capsys.readouterr().out


def test_two_tuning_processes_on_one_database_lose_nothing(cache, tmp_path):
    """Two processes tune several workloads each into one database at once; every record is intact."""
    script = tmp_path / "tune_some.py"
    script.write_text(
        "import sys\n"
        "import einattn\n"
        "from einattn.autotune.measure import Task\n"
        "from einattn.autotune.tuner import tune\n"
        "from einattn.backends.base import Workload\n"
        "for n in range(int(sys.argv[1]), int(sys.argv[1]) + 4):\n"
        "    t = Task(einattn.load_spec('softmax'), 'streaming', Workload.of(dict(b=1, h=1, m=8, n=2 ** n, d=8, e=8)))\n"
        "    tune(t, effort='quick', timer=lambda fn, cfg: 1e-3, repeats=1)\n")
    env = dict(os.environ, EINATTN_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, str(script), str(start)], env=env) for start in (3, 7)]
    assert [p.wait(300) for p in procs] == [0, 0]
    recs = Database(cache / "tuning" / "records.jsonl").records()
    assert sorted(dict(r.key.bucket)["key"] for r in recs) == [2 ** n for n in range(3, 11)]
    assert all(isinstance(r, Record) and r.candidates for r in recs)


@pytest.mark.parametrize("argv, phrase", [
    (["tune", "softmax", "--target", "reference", "--shape", SHAPE], "nothing to tune"),
    (["cache", "show", "zzz"], "no record with a key starting 'zzz'"),
    (["cache", "import", "/nonexistent.jsonl"], "import: No such file or directory"),
    (["cache", "export", "out.zip"], "name it FILE.jsonl"),
])
def test_bad_input_is_one_line_and_exit_2(cache, capsys, argv, phrase):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert phrase in err and "TuningError" in err and "Traceback" not in err


def test_import_of_a_file_that_is_not_records_names_the_line(cache, capsys, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text("not json\n")
    assert main(["cache", "import", str(f)]) == 2
    assert f"{f}:1: not a tuning record" in capsys.readouterr().err
