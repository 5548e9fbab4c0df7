"""Every zoo variant written as a plain PyTorch function (tests/trace_zoo.py): the derived cascade
plans to the same number of passes as ``examples/<name>.yaml``, and the decorated function matches
the function run eagerly at shapes other than the traced one (m != n, GQA, odd sizes, another d).

Structural hashes are not compared: a traced cascade names inputs after the function's arguments
(``q``, not ``Q``) and writes ``P / L * V`` where the zoo writes ``P * V / L``; what must agree is
the plan (its passes) and the numbers."""
from __future__ import annotations

import pytest
import torch

import einattn
from tests.trace_zoo import PLAIN

TRACED = dict(b=2, h=4, m=37, n=53, d=16, e=24, g=2)
OTHER = dict(b=3, h=6, m=20, n=45, d=32, e=8, g=3)
DECODE = dict(b=2, h=6, m=1, n=70, d=16, e=24, g=2)


def _inputs(make, sizes, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [x.to(dtype) for x in make(*sizes.values(), gen)]


def _close(out, exp, tol):
    outs, exps = (out, exp) if isinstance(out, tuple) else ((out,), (exp,))
    assert len(outs) == len(exps)
    for o, e in zip(outs, exps):
        assert o.shape == e.shape
        err = (o.double() - e.double()).abs().max().item() / max(e.double().abs().max().item(), 1e-30)
        assert err < tol, err


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_zoo_plans_like_the_spec_and_matches_eager(name):
    fn, make, zoo = PLAIN[name]
    att = einattn.attention(fn, target="reference")
    with torch.no_grad():
        for sizes in (TRACED, OTHER, DECODE):
            args = _inputs(make, sizes)
            out = att(*args)
            assert all(o.dtype == torch.float64 for o in (out if isinstance(out, tuple) else (out,)))
            _close(out, fn(*args), 1e-12)
    plan, want = einattn.explain(att), einattn.explain(zoo)
    assert plan.passes == want.passes, (plan.passes, want.passes)
    assert einattn.load_spec(att.spec()).structural_hash() == att.cascade().structural_hash()


@pytest.mark.cpu
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_zoo_on_the_cpu_kernel(name):
    fn, make, _ = PLAIN[name]
    att = einattn.attention(fn, target="cpu")
    with torch.no_grad():
        for sizes in (TRACED, OTHER):
            args = _inputs(make, sizes, torch.float32)
            out = att(*args)
            assert all(o.dtype == torch.float32 for o in (out if isinstance(out, tuple) else (out,)))
            _close(out, fn(*[a.double() for a in args]), 1e-4)
    # one kernel serves both shapes unless the function fixed a size (math.sqrt(d), math.log(n))
    assert len(att.kernels()) == (2 if name in ("softmax", "alibi", "sigmoid", "softplus") else 1)


POKES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 1e30}
# where einattn's documented rules (docs/decorator.md) differ from eager PyTorch, the spelling
# whose eager result einattn must equal instead: SDPA's additive mask is read as a mask, so NaN at
# a hidden key stays hidden, as with masked_fill
TWIN = {"causal_sdpa": "causal"}


def _poked(args, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    out = [a.clone() for a in args]
    for t in out[:3]:
        t[tuple(torch.randint(0, s, (1,), generator=gen).item() for s in t.shape)] = POKES[kind]
    return out


def _same(out, exp, tol):
    outs, exps = (out, exp) if isinstance(out, tuple) else ((out,), (exp,))
    for o, x in zip(outs, exps):
        o = o.double()
        assert torch.equal(torch.isnan(o), torch.isnan(x)), "NaN in other places"
        assert torch.equal(torch.isinf(o), torch.isinf(x)) and torch.equal(o[torch.isinf(o)], x[torch.isinf(x)])
        fin = torch.isfinite(x)
        if fin.any():
            assert (o[fin] - x[fin]).abs().max().item() <= tol * max(x[fin].abs().max().item(), 1.0)


@pytest.mark.parametrize("kind", sorted(POKES))
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_zoo_with_nan_inf_and_huge_inputs_on_the_reference(name, kind):
    """NaN, +-inf and 1e30 poked into Q, K and V: NaN and inf land where eager PyTorch puts them.
    Not compared: logsumexp of a row holding +inf (torch.logsumexp gives inf, a cascade's
    M + log(sum exp(S - M)) gives inf - inf = NaN; docs/decorator.md)."""
    if name == "lse" and kind in ("inf", "-inf"):
        pytest.skip("logsumexp of +inf: torch special-cases it, documented")
    fn, make, _ = PLAIN[name]
    twin = PLAIN[TWIN.get(name, name)][0]
    att = einattn.attention(fn, target="reference")
    for seed in range(2):
        args = _poked(_inputs(make, TRACED), kind, seed)
        with torch.no_grad():
            _same(att(*args), twin(*args), 1e-10)


@pytest.mark.cpu
@pytest.mark.parametrize("name", ["causal", "sinks", "alibi", "gqa_sdpa"])
def test_plain_zoo_with_nan_and_inf_on_the_cpu_kernel(name):
    fn, make, _ = PLAIN[name]
    att = einattn.attention(fn, target="cpu")
    for kind in ("nan", "inf", "huge"):
        args = _poked(_inputs(make, TRACED), kind, 0)
        with torch.no_grad():
            _same(att(*[a.float() for a in args]), fn(*args), 1e-4)
