"""The backward kernels (dq, dkv) compiled ahead of time for sm_80, sm_90, gfx90a and gfx942,
within each target's registers and shared memory (no GPU needed: Triton compiles to cubin and
hsaco here; numerics are tests/backends/test_backward.py's, in the interpreter)."""
from __future__ import annotations

import pytest
import torch

from einattn.backends import get_backend, parse_target
from einattn.backends.triton.hardware import load_target
from einattn.compiler import make_plan
from einattn.kernel import explain_backward

pytest.importorskip("triton")

CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
SIZES = {"b": 1, "h": 4, "m": 128, "n": 128, "d": 64, "e": 64}
CASES = [(n, t) for n in ("softmax", "causal") for t in ("cuda:sm_80", "cuda:sm_90", "rocm:gfx90a", "rocm:gfx942")] \
    + [(n, t) for n in ("alibi", "centered_relu") for t in ("cuda:sm_90", "rocm:gfx942")]


@pytest.mark.parametrize("name,target", CASES, ids=[f"{t}-{n}" for n, t in CASES])
def test_backward_kernels_build_ahead_of_time(name, target):
    t = parse_target(target)
    backend, hw = get_backend(t), load_target(t)
    stages = [st for st in explain_backward(name).stages if st.kind == "kernel"]
    assert [st.name for st in stages] == ["dq", "dkv"]
    for st in stages:
        art = backend.prepare(make_plan(st.cascade), t, CONFIG)
        ck = backend.build(art, SIZES, torch.float16)
        r = ck.resources
        assert 0 < r["shared_memory"] <= hw.shared_memory_per_block, (st.name, r)
        assert 0 < r["registers"] <= hw.max_registers_per_thread, (st.name, r)
        if hw.kind == "cuda":
            assert ck.files["cubin"][:4] == b"\x7fELF"
        else:
            assert ck.files["hsaco"][:4] == b"\x7fELF" and "mfma" in ck.files["amdgcn"]
