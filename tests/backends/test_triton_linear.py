"""The linear scan in Triton (backends/triton/linear.py): the kernels in Triton's interpreter,
chained states, bounds, and ahead-of-time builds.

Numerics: every LINEAR_ZOO variant through ``scan_inputs`` -> ``scan_triton`` -> ``finish``
against its float64 oracle (relative max error <= 1e-4; measured <= 3e-7) and against
``scan_torch`` (num and final state, <= 1e-5; measured ~1e-7), both schedules, chunks 16
and 32, at d = e = 16 and at d = 24, e = 40 with 32-column e-tiles (tails in D, E' and M).
Builds: causal + decay at D = E' = C = 64 with fp16 operands (the tensor-core path) for
sm_80, sm_90, gfx90a and gfx942, both schedules: no spills. (fp32 "ieee" dots lower to FMA
on CUDA and spill at that size, as the attention kernel's do.)
"""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.backends.torch.linear import ScanInputs, finish, scan_inputs, scan_torch
from einattn.compiler.linear import linear_form
from einattn.ir import UnsupportedError, bind_sizes, eval_params
from tests.zoo import LINEAR_ZOO, sizes

pytest.importorskip("triton")

from einattn.backends.triton.linear import compile_scan, render_scan, scan_triton  # noqa: E402

SCHEDULES = ("fused", "materialised")
SHAPES = {"d16e16": ({"d": 16, "e": 16}, None), "d24e40": ({"d": 24, "e": 40}, 32)}   # (sizes, block_e)
AOT_TARGETS = ("sm_80", "sm_90", "gfx90a", "gfx942")


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def _case(name: str, inputs: dict, chunk: int):
    spec = einattn.load_spec(name)
    form = linear_form(spec)
    sz = bind_sizes(spec, {k: t.shape for k, t in inputs.items()})
    params = eval_params(spec, sz, LINEAR_ZOO[name].params)
    return form, scan_inputs(form, inputs, sz, params, chunk), sz


def _inputs(name: str, **over) -> dict:
    sz = sizes(b=1, h=2, n=77, **over)
    if name == "efficient":
        sz["m"] = 50                     # non-causal: fewer queries than keys
    return LINEAR_ZOO[name].make_inputs(sz, torch.Generator().manual_seed(0))


@pytest.mark.cpu
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("chunk", [16, 32])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(LINEAR_ZOO))
def test_scan_matches_the_oracle_and_scan_torch(name, shape, chunk, schedule):
    dims, block_e = SHAPES[shape]
    v = LINEAR_ZOO[name]
    inputs = _inputs(name, **dims)
    form, x, sz = _case(name, inputs, chunk)
    num, state = scan_triton(x, form.mask, chunk, schedule, block_e=block_e)
    want_num, want_state = scan_torch(x, form.mask, chunk, schedule)
    assert _rel(finish(form, x, num, sz), v.torch_ref(inputs, v.params)) <= 1e-4
    assert _rel(num, want_num) <= 1e-5
    assert _rel(state, want_state) <= 1e-5


def _halves(name: str, inputs: dict, split: int):
    first = {k: t[..., :split, :] if t.dim() == 4 else t[..., :split] for k, t in inputs.items()}
    second = {k: t[..., split:, :] if t.dim() == 4 else t[..., split:] for k, t in inputs.items()}
    if name == "gla_scalar":             # cumulative gates restart after the split: G - G[split - 1]
        second["G"] = second["G"] - inputs["G"][..., split - 1:split]
    return first, second


@pytest.mark.cpu
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", [n for n in LINEAR_ZOO if n != "efficient"])
def test_state_chains_two_halves_of_a_sequence(name, schedule):
    v, split, chunk = LINEAR_ZOO[name], 40, 16          # the split is not a chunk boundary of the full run
    inputs = _inputs(name)
    want = v.torch_ref(inputs, v.params)[..., split:, :]
    first, second = _halves(name, inputs, split)
    _, x1, _ = _case(name, first, chunk)
    form, x2, sz2 = _case(name, second, chunk)
    _, s1 = scan_triton(x1, form.mask, chunk, schedule)
    num, s2 = scan_triton(x2, form.mask, chunk, schedule, state=s1)
    assert _rel(finish(form, x2, num, sz2), want) <= 1e-4
    _, x, _ = _case(name, inputs, chunk)
    assert _rel(s2, scan_torch(x, form.mask, chunk)[1]) <= 1e-5


def _synthetic(G=2, M=45, N=45, D=20, E=24, decay=False, chunk=16, seed=1) -> ScanInputs:
    g = torch.Generator().manual_seed(seed)
    F, K, V = (torch.randn(G, r, c, generator=g) * 0.5 for r, c in ((M, D), (N, D), (N, E)))
    ad = None
    if decay:       # a(p) = cumulative log-gates (a(-1) = 0), made chunk-relative as scan_inputs does
        a = torch.cumsum(torch.nn.functional.logsigmoid(torch.randn(G, M, generator=g) + 2.0), -1).double()
        start = (torch.arange(M) // chunk) * chunk
        prev = torch.where(start > 0, a[:, (start - 1).clamp(min=0)], torch.zeros(G, 1, dtype=torch.float64))
        ad = (a - prev).float()
    return ScanInputs(F, K, V, ad, torch.ones(1), (G,), (E,), E)


@pytest.mark.cpu
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("decay", [False, True])
def test_strict_mask_and_an_initial_state(schedule, decay):
    x = _synthetic(decay=decay)
    s0 = torch.randn(2, 20, 24, generator=torch.Generator().manual_seed(2))
    for mask in ("causal", "strict"):
        num, state = scan_triton(x, mask, 16, schedule, state=s0)
        want_num, want_state = scan_torch(x, mask, 16, schedule, state=s0)
        assert _rel(num, want_num) <= 1e-5 and _rel(state, want_state) <= 1e-5
    num, state = scan_triton(x, "strict", 16, schedule, final_state=False)
    assert state is None and _rel(num, scan_torch(x, "strict", 16)[0]) <= 1e-5


@pytest.mark.cpu
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_non_causal_state_chains_over_key_halves(schedule):
    x = _synthetic(M=37, N=70)
    full, s_full = scan_torch(x, "none", 16)
    first = ScanInputs(x.F, x.K[:, :33], x.V[:, :33], None, x.R, x.grid, x.value, x.columns)
    second = ScanInputs(x.F, x.K[:, 33:], x.V[:, 33:], None, x.R, x.grid, x.value, x.columns)
    _, s1 = scan_triton(first, "none", 32, schedule)
    num, s2 = scan_triton(second, "none", 32, schedule, state=s1, block_e=16)
    assert _rel(num, full) <= 1e-5 and _rel(s2, s_full) <= 1e-5


def _guarded(shape, store: list, fill=float("nan"), pad=4096):
    """A contiguous tensor in the middle of a NaN buffer: a read past either end turns results NaN,
    a write past either end leaves a non-NaN in the guard bands."""
    n = 1
    for s in shape:
        n *= s
    buf = torch.full((n + 2 * pad,), fill, dtype=torch.float32)
    store.append((buf, pad, n))
    return buf[pad:pad + n].view(shape)


@pytest.mark.cpu
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_no_read_or_write_out_of_bounds(schedule, monkeypatch):
    x = _synthetic(decay=True, M=45, N=45, D=20, E=24)
    bufs: list = []
    g = [_guarded(t.shape, bufs) for t in (x.F, x.K, x.V, x.ad)]
    for dst, src in zip(g, (x.F, x.K, x.V, x.ad)):
        dst.copy_(src)
    x_guarded = ScanInputs(*g, x.R, x.grid, x.value, x.columns)
    s0 = _guarded((2, 20, 24), bufs)
    s0.copy_(torch.randn(2, 20, 24))
    inputs = len(bufs)
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *shape, **kw: _guarded(
        tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape, bufs)
        if kw.get("dtype") == torch.float32 else real_empty(*shape, **kw))
    num, state = scan_triton(x_guarded, "causal", 16, schedule, state=s0, block_e=16)
    monkeypatch.undo()
    assert len(bufs) > inputs                             # outputs (and workspace) were guarded
    for buf, pad, n in bufs:
        assert buf[:pad].isnan().all() and buf[pad + n:].isnan().all()
    want_num, want_state = scan_torch(x, "causal", 16, state=s0)
    assert _rel(num, want_num) <= 1e-5 and _rel(state, want_state) <= 1e-5


@pytest.mark.cpu
def test_fp16_operands_through_the_dtype_hook():
    x = _synthetic(decay=True)
    h = ScanInputs(x.F.half(), x.K.half(), x.V.half(), x.ad, x.R, x.grid, x.value, x.columns)
    num, _ = scan_triton(h, "causal", 32, "fused")
    want, _ = scan_torch(ScanInputs(h.F.float(), h.K.float(), h.V.float(), x.ad, x.R, x.grid, x.value,
                                    x.columns), "causal", 32)
    # the scores and the state are rounded to fp16 as dot operands (measured 2.6e-4)
    assert num.dtype == torch.float32 and _rel(num, want) <= 2e-3


def test_every_variant_renders_python_with_its_constants_documented():
    for mask in ("none", "causal", "strict"):
        for decay in ((False,) if mask == "none" else (False, True)):
            for schedule in SCHEDULES:
                for has_state in (False, True):
                    src, kernels, args = render_scan(mask, decay, schedule, has_state, True)
                    compile(src, "scan.py", "exec")
                    assert all(f"def {k}(" in src for k in kernels)
                    for const in ("SIZE_D", "SIZE_E", "BLOCK_D", "BLOCK_E", "CHUNK", "DOT_PRECISION"):
                        assert f"#   {const}" in src
                    assert ("AD_ptr" in args) == decay and ("S0_ptr" in args) == has_state


@pytest.mark.parametrize("call, words", [
    (lambda x: scan_triton(x, "none", 16), "needs a causal mask"),
    (lambda x: scan_triton(x, "causal", 24), "expected one of 16, 32, 64, 128"),
    (lambda x: scan_triton(x, "causal", 16, "chunked"), "expected 'fused' or 'materialised'"),
    (lambda x: scan_triton(x, "causal", 16, block_e=24), "power of two"),
])
def test_refusals_say_what_was_expected(call, words):
    with pytest.raises(UnsupportedError, match=words):
        call(_synthetic(decay=True))


def test_a_causal_scan_refuses_unequal_lengths():
    with pytest.raises(UnsupportedError, match="as many keys as queries"):
        scan_triton(_synthetic(M=20, N=30), "causal", 16)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("target", AOT_TARGETS)
def test_aot_build_reports_resources_and_does_not_spill(target, schedule):
    built = compile_scan(target, 64, 64, 64, "causal", True, schedule, dtype=torch.float16)
    assert list(built) == (["einattn_linear_scan"] if schedule == "fused" else
                           ["einattn_linear_states", "einattn_linear_chunks"])
    for ck in built.values():
        r = ck.resources
        assert r["registers"] > 0 and r["shared_memory"] > 0, r
        if target.startswith("sm_"):
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
            assert ck.files["cubin"]
        else:
            assert r["spill_vgprs"] == 0 and r["spill_sgprs"] == 0 and r["scratch"] == 0, r
            assert ck.files["hsaco"]
