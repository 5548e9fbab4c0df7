"""The CPU kernel cache on disk: damaged entries are reported once and rebuilt, never loaded.

Every load of a damaged entry runs in a subprocess: loading an unchecked
truncated library kills the process with SIGBUS, which would take pytest with it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import einattn
from einattn.backends import cache
from tests.helpers import assert_rel_close, zoo_inputs

pytest.importorskip("tvm")
pytestmark = pytest.mark.cpu

ROOT = Path(__file__).resolve().parents[2]
NAME, SHAPE, OTHER_SHAPE = "sigmoid", {"d": 16, "e": 16}, {"d": 32, "e": 32}

# compiles and runs the kernel once, recording warnings; prints them and the error vs the reference
CHILD = f"""
import json, warnings, torch, einattn
from tests.helpers import zoo_inputs
x = zoo_inputs({NAME!r}, dtype=torch.float32, b=1, h=2)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    got = einattn.compile({NAME!r}, target="cpu")(**x)
want = einattn.compile({NAME!r}, target="reference")(**{{k: v.double() for k, v in x.items()}})
err = ((got.double() - want).abs().max() / want.abs().max()).item()
print(json.dumps({{"warnings": [f"{{w.category.__name__}}: {{w.message}}" for w in seen], "err": err}}))
"""


def run_child(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "EINATTN_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"the child died with status {p.returncode}:\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Two valid cache entries built here: NAME at SHAPE and at OTHER_SHAPE. Returns
    {shape: (library path, key fields)}."""
    from einattn.backends.cpu import build as cpu
    root = tmp_path_factory.mktemp("good-cache") / "cpu"
    # the artifact of the config the child's call runs (its program and keys chosen for the call)
    art = einattn.compile(NAME, target="cpu")._artifact.concrete({"b": 1, "h": 2, "m": 77, "n": 131}, {})
    entries = {}
    for shape in (SHAPE, OTHER_SHAPE):
        key, fields = cpu.cache_key(art, shape)
        path = root / f"{key}.so"
        cpu._build(lambda: cpu.build_source(art, shape), path, fields)
        assert cache.check_entry(path, fields) is None
        entries[tuple(shape.items())] = path, fields
    return entries


def truncate(so: Path, other: Path) -> None:
    so.write_bytes(so.read_bytes()[: so.stat().st_size // 2])


def flip_bits(so: Path, other: Path) -> None:
    b = bytearray(so.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 64):
        b[i] ^= 0xFF
    so.write_bytes(bytes(b))


def empty(so: Path, other: Path) -> None:
    so.write_bytes(b"")


def drop_sidecar(so: Path, other: Path) -> None:
    so.with_suffix(".json").unlink()


def foreign_sidecar(so: Path, other: Path) -> None:
    shutil.copy(other.with_suffix(".json"), so.with_suffix(".json"))


@pytest.mark.parametrize("damage, why", [
    (truncate, "sha256 differs"), (flip_bits, "sha256 differs"), (empty, "sha256 differs"),
    (drop_sidecar, "sidecar .* is missing"), (foreign_sidecar, "sidecar describes another entry")])
def test_damaged_entry_warns_once_and_is_rebuilt(good, tmp_path, damage, why):
    from einattn.backends.cpu import build as cpu
    (src, fields), (other, _) = good[tuple(SHAPE.items())], good[tuple(OTHER_SHAPE.items())]
    shutil.copytree(src.parent, tmp_path / "cpu")
    so = tmp_path / "cpu" / src.name
    damage(so, tmp_path / "cpu" / other.name)
    assert cache.check_entry(so, fields) is not None

    r = result(run_child(tmp_path))
    assert len(r["warnings"]) == 1, r["warnings"]
    assert re.search(rf"RuntimeWarning: .*unreadable cpu kernel cache file {re.escape(str(so))} .*{why}",
                     r["warnings"][0]), r["warnings"][0]
    assert r["err"] <= 1e-4
    assert cache.check_entry(so, fields) is None                      # repaired: loads from now on
    assert cpu._load(so, fields)[0] is not None
    assert not [p.name for p in so.parent.iterdir() if ".tmp" in p.name]


def test_processes_building_one_key_take_turns(tmp_path):
    """Two processes start with an empty cache: both succeed without warnings, one valid entry."""
    a, b = run_child(tmp_path), run_child(tmp_path)
    for r in (result(a), result(b)):
        assert r["warnings"] == [] and r["err"] <= 1e-4
    libs = list((tmp_path / "cpu").glob("*.so"))
    assert len(libs) == 1
    meta = json.loads(libs[0].with_suffix(".json").read_text())
    fields = {k: v for k, v in meta.items() if k not in ("sha256", "bytes")}
    assert cache.check_entry(libs[0], fields) is None


def test_unwritable_cache_warns_once_and_runs_from_memory(monkeypatch, tmp_path):
    from einattn.backends.cpu import build as cpu
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("EINATTN_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(cpu, "_MEMORY", {})
    x = zoo_inputs(NAME, dtype=torch.float32, b=1, h=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = einattn.compile(NAME, target="cpu")(**x)
    assert len(seen) == 1 and seen[0].category is RuntimeWarning, [str(w.message) for w in seen]
    assert "could not write the cpu kernel cache file" in str(seen[0].message)
    assert_rel_close(got, einattn.compile(NAME, target="reference")(**{k: v.double() for k, v in x.items()}),
                     1e-4, NAME)


def test_a_write_seen_midway_is_waited_for(good, tmp_path, monkeypatch):
    """A reader that finds the new sidecar beside the old library waits for the writer's lock,
    then loads the finished entry: no warning, no second build."""
    from einattn.backends.cpu import build as cpu
    src, fields = good[tuple(SHAPE.items())]
    shutil.copytree(src.parent, tmp_path / "cpu")
    so = tmp_path / "cpu" / src.name
    whole = so.read_bytes()
    so.write_bytes(b"the old library")

    @contextlib.contextmanager
    def writer_finishes(path):
        so.write_bytes(whole)                   # the lock is granted once the writer is done
        yield

    monkeypatch.setattr(cache, "entry_lock", writer_finishes)
    monkeypatch.setattr(cpu, "_build", lambda *a: pytest.fail("rebuilt an entry another process was writing"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu._load_or_build(None, so, fields) is not None
