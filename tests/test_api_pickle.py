"""Kernels pickle as what they were compiled from, and copy by sharing what was built.

Every target kind is covered: reference, streaming, cpu and cuda in Triton's
interpreter. Outputs are checked against the float64 reference.
"""
from __future__ import annotations

import copy
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import einattn
from tests.helpers import SOFTMAX, assert_rel_close, zoo_inputs

ROOT = Path(__file__).resolve().parent.parent
REL = 1e-4
TARGETS = {"reference": {}, "streaming": {}, "cpu": {}, "cuda": {"interpret": True}}
NEEDS = {"cpu": "tvm", "cuda": "triton"}


def compiled(target: str) -> einattn.Kernel:
    """Softmax from YAML text (no file or zoo name to find again), a param override, a config."""
    if target in NEEDS:
        pytest.importorskip(NEEDS[target])
    config = {"BLOCK_N": 32} if target in ("streaming", "cpu") else {}
    return einattn.compile(SOFTMAX, target=target, config=config, scale=0.25, **TARGETS[target])


def inputs(seed: int = 0) -> dict:
    return zoo_inputs("softmax", seed=seed, dtype=torch.float32, b=1, h=2)


def check(got, x: dict) -> None:
    ref = einattn.compile(SOFTMAX, target="reference", scale=0.25)
    assert_rel_close(torch.as_tensor(got), ref(**{k: v.double() for k, v in x.items()}), REL, "softmax")


def run(kernel, x: dict):
    """A pool task (module level, so a spawned child can import it)."""
    return kernel(**x).numpy()


@pytest.mark.parametrize("target", TARGETS)
def test_pickle_round_trip(target):
    k = compiled(target)
    k2 = pickle.loads(pickle.dumps(k))
    assert k2 is not k and k2._artifact is not k._artifact
    assert (str(k2.target), k2.spec, k2.spec.name, k2.params, k2.config, k2.interpret, k2.tune) == \
           (str(k.target), k.spec, k.spec.name, {"scale": 0.25}, k.config, k.interpret, "none")
    x = inputs()
    check(k2(**x), x)


@pytest.mark.parametrize("target", TARGETS)
def test_copies_share_the_build(target):
    k = compiled(target)
    for c in (copy.copy(k), copy.deepcopy(k)):
        assert c is not k and c._artifact is k._artifact and c._backend is k._backend
        c.params["scale"] = 1.0                 # the option dicts are the copy's own
        assert k.params == {"scale": 0.25}
    x = inputs()
    check(copy.deepcopy(k)(**x), x)


class Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)
        self.attend = {"cpu": compiled("cpu"), "streaming": compiled("streaming")}

    def forward(self, x: dict, target: str):
        return self.attend[target](Q=self.proj(x["Q"]), K=x["K"], V=x["V"])


def test_deepcopy_of_a_module_holding_kernels():
    m = Heads()
    m2 = copy.deepcopy(m)
    x = inputs()
    for t in m.attend:
        assert m2.attend[t] is not m.attend[t] and m2.attend[t]._artifact is m.attend[t]._artifact
        with torch.no_grad():
            torch.testing.assert_close(m2(x, t), m(x, t), rtol=0, atol=0)


def test_spawn_pool_round_trip():
    kernels = [compiled(t) for t in TARGETS]
    xs = [inputs(i) for i in range(len(kernels))]
    with mp.get_context("spawn").Pool(2) as pool:
        outs = pool.starmap_async(run, list(zip(kernels, xs))).get(timeout=120)
    for got, x in zip(outs, xs):
        check(got, x)


def test_unpickled_with_an_empty_cache_rebuilds(tmp_path):
    from einattn.backends import cache
    (tmp_path / "kernel.pkl").write_bytes(pickle.dumps(compiled("cpu")))
    x = inputs()
    torch.save(x, tmp_path / "x.pt")
    fresh = tmp_path / "fresh-cache"
    child = ("import pickle, torch; k = pickle.loads(open('kernel.pkl', 'rb').read()); "
             "torch.save(k(**torch.load('x.pt')), 'out.pt')")
    env = {**os.environ, "EINATTN_CACHE_DIR": str(fresh), "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    check(torch.load(tmp_path / "out.pt"), x)
    libs = list((fresh / "cpu").glob("*.so"))
    assert len(libs) == 1
    meta = json.loads(libs[0].with_suffix(".json").read_text())
    assert cache.check_entry(libs[0], {k: v for k, v in meta.items() if k not in ("sha256", "bytes")}) is None
