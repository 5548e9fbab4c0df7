"""Linear cascades: the chunked scan on the CPU, the quadratic/chunked choice, states, long sequences.

Oracles: ``tests.zoo.LINEAR_ZOO`` (independent float64 PyTorch, the quadratic form with explicit
decay matrices) and the float64 reference executor of the cascade as written.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch

import einattn
from einattn.backends.linear import LinearBackend
from einattn.compiler.linear import choose, linear_form
from einattn.ir import UnsupportedError, bind_sizes
from tests.helpers import assert_rel_close
from tests.zoo import LINEAR_ZOO, sizes

pytestmark = pytest.mark.cpu
NAMES = list(LINEAR_ZOO)


def inputs(name: str, seed: int = 0, **sz) -> dict:
    return LINEAR_ZOO[name].make_inputs(sizes(**sz), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("target", ["reference", "streaming"])
@pytest.mark.parametrize("name", NAMES)
def test_torch_targets_match_the_oracle(name, target):
    x = inputs(name)
    v = LINEAR_ZOO[name]
    dt = torch.float64 if target == "reference" else torch.float32
    got = einattn.compile(name, target=target)(**{k: t.to(dt) for k, t in x.items()})
    assert_rel_close(got, v.torch_ref(x, v.params), 1e-12 if target == "reference" else 1e-5, name)


@pytest.mark.parametrize("schedule", ["fused", "materialised"])
@pytest.mark.parametrize("chunk", [16, 64])
@pytest.mark.parametrize("name", NAMES)
def test_the_cpu_scan_matches_the_oracle(name, chunk, schedule):
    k = einattn.compile(name, target="cpu", config={"ALGORITHM": "chunked", "CHUNK": chunk, "SCHEDULE": schedule})
    assert isinstance(k._backend, LinearBackend)
    v = LINEAR_ZOO[name]
    for sz in ({}, {"n": 77, "m": 50, "d": 24, "e": 40, "h": 3, "b": 1}):
        x = inputs(name, **sz)
        assert_rel_close(k(**x), v.torch_ref(x, v.params), 2e-5, f"{name} {sz}")


@pytest.mark.parametrize("name", NAMES)
def test_auto_picks_by_cost_and_both_algorithms_agree(name):
    x = inputs(name, n=300, m=300, b=1, h=2)
    k = einattn.compile(name, target="cpu")
    sz = bind_sizes(k.spec, {a: tuple(t.shape) for a, t in x.items()})
    got = k(**x)
    assert_rel_close(got, LINEAR_ZOO[name].torch_ref(x, {}), 2e-5, name)
    ch = k._artifact.choice(sz, 2)
    if k._artifact.quadratic is None:                     # phi(Q).phi(K), softmaxed features
        assert ch.algorithm == "chunked" and "cannot run this cascade" in ch.why
    else:
        q = einattn.compile(name, target="cpu", config={"ALGORITHM": "quadratic"})(**x)
        assert_rel_close(got, q.double(), 2e-5, name)


def test_the_cost_model_crosses_over():
    f = linear_form(einattn.load_spec("retention"))
    at = lambda n: choose(f, {"b": 1, "h": 8, "m": n, "n": n, "d": 64, "e": 64}, {}, True, None, 2).algorithm
    assert at(128) == "quadratic" and at(16384) == "chunked"
    g = {"b": 1, "h": 8, "m": 100, "n": 200, "d": 64, "e": 64}
    assert choose(f, g, {}, True, None, 2).algorithm == "quadratic"          # causal, m != n
    with pytest.raises(UnsupportedError, match="as many queries as keys"):
        choose(f, g, {"ALGORITHM": "chunked"}, True, None, 2)
    assert choose(f, {**g, "m": 200}, {}, True, None, 2).schedule == "fused"          # 8 tasks, 2 threads
    assert choose(f, {**g, "m": 200, "h": 1}, {}, True, None, 2).schedule == "materialised"
    assert choose(f, {**g, "m": 200}, {}, True, None, 2).chunk == 32            # under 256 keys


@pytest.mark.parametrize("name", ["linear_elu", "gla_scalar", "lightning"])
def test_a_state_carries_a_sequence_across_calls(name):
    x = inputs(name, n=150, b=1, h=2)
    k = einattn.compile(name, target="cpu", config={"CHUNK": 32})
    whole, _ = k.scan(**x)
    cut = 70
    first = {a: t[:, :, :cut] for a, t in x.items()}
    second = {a: t[:, :, cut:] for a, t in x.items()}
    if "G" in x:                                          # cumulative log-gates restart at the cut
        second["G"] = x["G"][:, :, cut:] - x["G"][:, :, cut - 1:cut]
    o1, s = k.scan(**first)
    o2, s2 = k.scan(**second, state=s)
    assert s.shape == (1, 2, 16, 16 + (name == "linear_elu"))
    assert_rel_close(torch.cat([o1, o2], 2), whole.double(), 1e-5, name)
    with pytest.raises(UnsupportedError, match="state has shape"):
        k.scan(**second, state=s[..., :3])


def test_a_long_decayed_sequence_stays_finite_and_accurate():
    """N = 65,536 and lambda = 0.9 in fp32: 0.9^-65535 would overflow; the scan's decay is chunk-relative."""
    spec = einattn.load_spec("""einattn: 1
name: decay09
inputs: {Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e]}
params: {lam: 0.9}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]
  - O[b,h,m,e] = where(n <= m, S[b,h,m,n] * lam ** (m - n), 0) * V[b,h,n,e]
outputs: [O]
""")
    N = 65536
    g = torch.Generator().manual_seed(0)
    q, kk, v = (torch.randn(1, 1, N, 16, generator=g) for _ in range(3))
    out = einattn.compile(spec, target="cpu")(q, kk, v)
    assert torch.isfinite(out).all()
    # the float64 reference on the first and last rows (the whole [N, N] would take 34 GB)
    from einattn.backends.torch.evaluator import Frame, eval_stmt
    for lo, hi in ((0, 64), (N - 128, N)):
        ranges = {"b": (0, 1), "h": (0, 1), "m": (lo, hi), "n": (0, N), "d": (0, 16), "e": (0, 16)}
        ins = {"Q": (q.double(), ("b", "h", "m", "d")), "K": (kk.double(), ("b", "h", "n", "d")),
               "V": (v.double(), ("b", "h", "n", "e"))}
        vals = {}
        for s in spec.stmts:
            vals[s.name] = (eval_stmt(s, Frame(ranges, ins, vals, {"lam": 0.9}, torch.float64)), s.indices)
        assert_rel_close(out[:, :, lo:hi], vals["O"][0], 1e-3, f"rows {lo}..{hi}")


def test_a_hidden_nonlinearity_is_planned_quadratically():
    spec = """einattn: 1
name: relu_where
inputs: {Q: [b, h, m, d], K: [b, h, n, d], V: [b, h, n, e]}
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]
  - O[b,h,m,e] = where(S[b,h,m,n] > 0, S[b,h,m,n], 0) * V[b,h,n,e]
outputs: [O]
"""
    k = einattn.compile(spec, target="cpu")
    assert not isinstance(k._backend, LinearBackend)
    assert "linear: no" in str(einattn.explain(spec))
    with pytest.raises(UnsupportedError, match="runs no scan"):
        k.scan(*(torch.randn(1, 1, 8, 4) for _ in range(3)))


def test_bad_config_is_refused_with_the_options():
    with pytest.raises(UnsupportedError, match="ALGORITHM='fast'.*'chunked'"):
        einattn.compile("retention", target="cpu", config={"ALGORITHM": "fast"})
    with pytest.raises(UnsupportedError, match="never runs it"):
        einattn.compile("retention", target="cpu", config={"ALGORITHM": "chunked", "BLOCK_N": 64})
    with pytest.raises(UnsupportedError, match="Fq"):
        einattn.compile("linear_elu", target="cpu", config={"ALGORITHM": "quadratic"})
    with pytest.raises(UnsupportedError, match="does not search its algorithm"):
        einattn.compile("retention", target="cpu", tune="quick")
    with pytest.raises(einattn.EinattnError, match="ALGORITHM"):
        einattn.compile("softmax", target="cpu", config={"ALGORITHM": "chunked"})


def test_a_linear_kernel_pickles_and_copies():
    k = einattn.compile("lightning", target="cpu", config={"ALGORITHM": "chunked", "CHUNK": 16})
    x = inputs("lightning", n=40, b=1, h=2)
    want = k(**x)
    for k2 in (pickle.loads(pickle.dumps(k)), copy.deepcopy(k)):
        assert isinstance(k2._backend, LinearBackend)
        assert torch.equal(k2(**x), want)


@pytest.mark.parametrize("name", NAMES)
def test_the_triton_scan_through_compile(name):
    """The cuda target in Triton's interpreter: the whole path (features, scan, R) against the oracle."""
    k = einattn.compile(name, target="cuda", interpret=True, config={"ALGORITHM": "chunked", "CHUNK": 16})
    assert isinstance(k._backend, LinearBackend)
    x = inputs(name, n=40, m=30, b=1, h=2)
    assert_rel_close(k(**x), LINEAR_ZOO[name].torch_ref(x, {}), 1e-4, name)


def test_training_runs_the_derived_quadratic_backward_or_says_why_not():
    v = LINEAR_ZOO["retention"]
    x = inputs("retention", n=40, b=1, h=2)
    xr = {k: t.double().requires_grad_() for k, t in x.items()}
    v.torch_ref(xr, {}).sum().backward()
    xc = {k: t.clone().requires_grad_() for k, t in x.items()}
    einattn.compile("retention", target="cpu")(**xc).sum().backward()
    for k in x:
        assert_rel_close(xc[k].grad, xr[k].grad, 1e-5, k)
    xe = {k: t.clone().requires_grad_() for k, t in inputs("linear_elu", n=40, b=1, h=2).items()}
    with pytest.raises(UnsupportedError, match="computed by a statement"):
        einattn.compile("linear_elu", target="cpu")(**xe)


def test_einattn_check_runs_a_causal_linear_spec_at_as_many_queries_as_keys(capsys):
    from einattn.cli import main
    assert main(["check", "linear_elu", "--target", "cpu", "--shape", "b=1,h=2,m=50,n=77,d=16,e=16"]) != 0
    capsys.readouterr()
    assert main(["check", "linear_elu", "--target", "cpu"]) == 0     # the default shape, with m = n
    assert "m=131,n=131" in capsys.readouterr().out


def test_a_nonfinite_value_is_never_scanned_past_a_causal_mask():
    """Found checking NaN inputs: the cascade multiplies V by the mask's 0 for earlier queries, so a
    NaN value key makes every row NaN in the reference; the scan only spread it to later rows."""
    for name in ("lightning", "linear_elu"):
        x = inputs(name, n=40, b=1, h=2)
        x["V"][0, 0, 25, 3] = float("nan")
        k = einattn.compile(name, target="cpu", config={"CHUNK": 16})
        if name == "lightning":                          # the quadratic kernel reproduces the reference
            want = einattn.compile(name, target="reference")(**{a: t.double() for a, t in x.items()})
            got = einattn.compile(name, target="cpu", config={"ALGORITHM": "chunked", "CHUNK": 16})(**x)
            assert torch.equal(got.isnan(), want.isnan()) and got[0, 0, :25, 3].isnan().all()
        else:                                            # no quadratic kernel: refused, never wrong
            with pytest.raises(UnsupportedError, match="NaN or inf.*nan_to_num"):
                k(**x)
        with pytest.raises(UnsupportedError, match="NaN or inf"):
            k.scan(**x)
