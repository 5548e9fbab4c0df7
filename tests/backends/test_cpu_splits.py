"""KV_SPLITS on the CPU backend: a key loop split into parallel parts and merged per row
gives the unsplit kernel's result (within float32 rounding) and the float64 reference's.

Each (variant, split count) compiles once (BLOCK_N = 16, so short key lengths already
make several key tiles, and parts with no tile at all); the shapes of a table share it.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import einattn
from einattn.compiler import make_kernel_plan, make_plan
from einattn.compiler.splits import split_refusal
from einattn.specs import load_spec
from tests.helpers import ZOO_NAMES, assert_rel_close, ieee_mismatch, zoo_inputs

pytest.importorskip("tvm")

REL = 1e-4                  # against the float64 reference (as tests/backends/test_cpu.py)
REL_UNSPLIT = 2e-5          # against the unsplit kernel: only the order of the sums differs
BLOCK_N = 16


def _one_pass(name: str) -> bool:
    return split_refusal(make_kernel_plan(make_plan(load_spec(name)))) is None


ONE_PASS = [n for n in ZOO_NAMES if _one_pass(n)]
MULTI_PASS = [n for n in ZOO_NAMES if not _one_pass(n)]

# (b, h, m, n): with BLOCK_N = 16 and 3 parts, 53 keys make 4 tiles (the third part gets none),
# 20 keys 2 tiles (n < S * BLOCK_N), 300 keys 19 tiles; m > n hides whole rows of a bottom-right
# causal mask, and a short query block of a sliding window or prefix-LM mask hides whole parts
SHAPES = [(1, 2, 37, 53), (2, 2, 5, 300), (1, 2, 131, 77), (1, 2, 3, 20), (1, 2, 1, 1)]


@functools.lru_cache(maxsize=None)
def cpu_kernel(name: str, splits: int):
    return einattn.compile(name, target="cpu", config={"BLOCK_N": BLOCK_N, "PV_E": 16, "KV_SPLITS": splits})


@functools.lru_cache(maxsize=None)
def ref_kernel(name: str):
    return einattn.compile(name, target="reference")


def reference(name: str, x: dict):
    return ref_kernel(name)(**{k: v.double() for k, v in x.items()})


@pytest.mark.cpu
@pytest.mark.parametrize("name", ONE_PASS)
def test_zoo_three_parts_against_reference(name):
    for b, h, m, n in SHAPES:
        x = zoo_inputs(name, dtype=torch.float32, b=b, h=h, m=m, n=n)
        assert_rel_close(cpu_kernel(name, 3)(**x), reference(name, x), REL, f"{name} KV_SPLITS=3 {(b, h, m, n)}")


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["causal_bottom_right", "sinks"])
def test_split_counts_agree_with_unsplit(name):
    """2, 4, 8 parts: the unsplit kernel's result within float32 rounding, and the reference's."""
    for splits in (2, 4, 8):
        for b, h, m, n in SHAPES:
            x = zoo_inputs(name, dtype=torch.float32, b=b, h=h, m=m, n=n)
            got = cpu_kernel(name, splits)(**x)
            what = f"{name} KV_SPLITS={splits} {(b, h, m, n)}"
            assert_rel_close(got, cpu_kernel(name, 1)(**x), REL_UNSPLIT, what + " vs KV_SPLITS=1")
            assert_rel_close(got, reference(name, x), REL, what)


@pytest.mark.cpu
def test_fully_masked_rows_and_no_keys_are_exactly_zero():
    """Rows that see no key in any part output exactly 0, as unsplit; no keys at all: every part
    is empty, and the outputs are the reference's exactly (0, lse -inf)."""
    out = cpu_kernel("causal_bottom_right", 3)(**zoo_inputs("causal_bottom_right", dtype=torch.float32,
                                                             m=131, n=77))
    assert torch.equal(out[:, :, :131 - 77], torch.zeros_like(out[:, :, :131 - 77]))
    x = zoo_inputs("lse", dtype=torch.float32, b=1, h=2, m=5, n=0)
    for g, w in zip(cpu_kernel("lse", 3)(**x), reference("lse", x)):
        torch.testing.assert_close(g.double(), w, rtol=0, atol=0)


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["causal", "sliding_window", "softmax"])
def test_nonfinite_inputs(name):
    """NaN and +-inf in any input, also at keys a mask hides (the visit-all variant): NaN and inf
    where the reference has them, finite values within tolerance."""
    x = zoo_inputs(name, dtype=torch.float32, b=1, h=2, m=9, n=70)
    for inp in x:
        for value in (math.nan, math.inf, -math.inf, 1e30):
            for at in (0.1, 7 / 11, 0.97):
                y = {k: v.clone() for k, v in x.items()}
                y[inp].view(-1)[int(at * y[inp].numel())] = value
                want = reference(name, y)
                msg = ieee_mismatch(cpu_kernel(name, 3)(**y), want, 1e-3)
                assert msg is None, f"{name} KV_SPLITS=3, {inp} = {value} at {at}: {msg}"


def test_multi_pass_plan_is_refused_with_the_fix():
    assert MULTI_PASS, "the zoo has a multi-pass variant to refuse"
    with pytest.raises(einattn.UnsupportedError, match=r"passes over the keys.*KV_SPLITS=1"):
        einattn.compile(MULTI_PASS[0], target="cpu", config={"KV_SPLITS": 2})


def test_split_count_bounds():
    with pytest.raises(einattn.UnsupportedError, match="KV_SPLITS=0 .*positive"):
        einattn.compile("softmax", target="cpu", config={"KV_SPLITS": 0})
    with pytest.raises(einattn.UnsupportedError, match="KV_SPLITS=65 must be in 1..64"):
        einattn.compile("softmax", target="cpu", config={"KV_SPLITS": 65})


# -- the source ------------------------------------------------------------------------

def _source(name: str, **config) -> str:
    from einattn.backends.cpu.config import CpuConfig
    from einattn.backends.cpu.render import render
    kp = make_kernel_plan(make_plan(load_spec(name)))
    return render(kp, CpuConfig(**config), {i: 16 for i in kp.static}, 16)


@pytest.mark.parametrize("name", ["softmax", "sinks", "prefix_lm", "differential", "centered_relu"])
def test_one_part_renders_no_split(name):
    """KV_SPLITS=1 renders the kernel as before the split existed: one parallel loop over the
    tasks, no workspace, no merge (checked byte for byte against the previous renderer when
    KV_SPLITS was added)."""
    src = _source(name)
    assert src == _source(name, KV_SPLITS=1)
    assert src.count("T.parallel(") == 1
    for word in ("h_ws", "task_part", "part", "merge", "kt_lo"):
        assert word not in src, word


def test_split_source_has_a_workspace_and_a_merge_loop():
    src = _source("sinks", KV_SPLITS=4)
    assert "h_ws: T.handle" in src and src.count("T.parallel(") == 2
    assert "merge of the parts' states" in src
