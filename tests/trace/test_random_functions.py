"""Random attention functions written in plain PyTorch, nobody's by hand: a score spelling (einsum,
``@``, scaled queries, SDPA), a chain of score modifications (scales, softcap, per-head biases
and slopes, relative-position terms, a bias tensor), a mask (causal, window, prefix, bottom-right,
a random affine band, none), a weighting (softmax, log_softmax then exp, a hand-written softmax,
sigmoid, relu normalised by its sum, softplus), optional GQA and an optional logsumexp output.
Each is decorated, traced at one shape and checked against itself run eagerly in float64 at
another shape (reference target, tight) and, for a share, on the CPU kernel (fp32).

CI runs ``EINATTN_FUNCTIONS`` (default 12: a trace costs 1-2 s) fixed-seed examples, a fifth of them on
the CPU kernel; for a longer hunt or a fresh sample: ``EINATTN_FUNCTIONS=300 [EINATTN_FUNCTIONS_SEED=N]
python -m pytest tests/trace/test_random_functions.py``."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import einattn

EXAMPLES = int(os.environ.get("EINATTN_FUNCTIONS", "12"))
SEED = os.environ.get("EINATTN_FUNCTIONS_SEED")      # a fresh sample: any integer


def _scores(spelling, q, k):
    d = q.shape[-1]
    if spelling == "einsum":
        return torch.einsum("bhmd,bhnd->bhmn", q, k) * d ** -0.5
    if spelling == "matmul":
        return torch.matmul(q, k.transpose(-2, -1)) / d ** 0.5
    return (q * d ** -0.5) @ k.transpose(-1, -2)                    # scaled queries


def _modify(s, mod, extra):
    m, n = s.shape[-2:]
    i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
    kind, c = mod
    if kind == "scale":
        return s * c
    if kind == "softcap":
        return c * torch.tanh(s / c)
    if kind == "head_bias":
        return s + extra["hb"][:, None, None]
    if kind == "alibi":
        return s - extra["slope"].view(-1, 1, 1) * (i - j).abs()
    if kind == "relpos":
        return s + c * (j - i).to(s.dtype) / n      # eager would compute int * float in float32
    if kind == "bias":
        return s + extra["bias"]
    return s


def _mask(s, mask):
    if mask is None:
        return None
    m, n = s.shape[-2:]
    i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
    kind, a = mask
    if kind == "causal":
        return j <= i
    if kind == "window":
        return (j <= i) & (j > i - a)
    if kind == "prefix":
        return (j <= i) | (j < a)
    if kind == "bottom_right":
        return j <= i + (n - m)
    return (j - i <= a) & (i - j <= a)                               # a band, the diagonal in


def make_function(spelling, mods, mask, weighting, gqa, with_lse):
    """A plain PyTorch attention function (a closure over the choices) and its extra inputs."""
    def attention(q, k, v, hb, slope, bias):
        if gqa:
            r = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        extra = {"hb": hb, "slope": slope, "bias": bias}
        if spelling == "sdpa" and not mods and weighting == "softmax" and not with_lse:
            keep = _mask(q @ k.transpose(-1, -2), mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        s = _scores("einsum" if spelling == "sdpa" else spelling, q, k)
        for mod in mods:
            s = _modify(s, mod, extra)
        keep = _mask(s, mask)
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf")) if weighting in ("softmax", "log_softmax", "manual") \
                else s
        if weighting == "softmax":
            p = torch.softmax(s, dim=-1)
        elif weighting == "log_softmax":
            p = torch.exp(torch.log_softmax(s, dim=-1))
        elif weighting == "manual":
            e = torch.exp(s - s.amax(dim=-1, keepdim=True))
            p = e / e.sum(dim=-1, keepdim=True)
        elif weighting == "sigmoid":
            p = torch.sigmoid(s - math.log(s.shape[-1]))
        elif weighting == "relu":
            p = torch.relu(s)
            p = p / (p.sum(dim=-1, keepdim=True) + 1.0)
        else:
            p = F.softplus(s) / s.shape[-1]
        if keep is not None and weighting not in ("softmax", "log_softmax", "manual"):
            p = torch.where(keep, p, 0.0)
        o = p @ v
        return (o, torch.logsumexp(s, dim=-1)) if with_lse else o
    return attention


MODS = st.lists(st.one_of(
    st.tuples(st.just("scale"), st.floats(0.25, 2.0)),
    st.tuples(st.just("softcap"), st.floats(2.0, 30.0)),
    st.tuples(st.sampled_from(["head_bias", "alibi", "bias"]), st.just(0.0)),
    st.tuples(st.just("relpos"), st.floats(-2.0, 2.0))), max_size=3)
MASKS = st.one_of(st.none(), st.tuples(st.sampled_from(["causal", "bottom_right"]), st.just(0)),
                  st.tuples(st.just("window"), st.integers(1, 40)), st.tuples(st.just("prefix"), st.integers(0, 20)),
                  st.tuples(st.just("band"), st.integers(0, 12)))
FUNCTIONS = st.tuples(st.sampled_from(["einsum", "matmul", "scaled_q", "sdpa"]), MODS, MASKS,
                      st.sampled_from(["softmax", "log_softmax", "manual", "sigmoid", "relu", "softplus"]),
                      st.booleans(), st.booleans())


def _inputs(b, h, g, m, n, d, e, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)   # noqa: E731
    return r(b, h, m, d), r(b, g, n, d), r(b, g, n, e), r(h), torch.rand(h, generator=gen, dtype=torch.float64), \
        r(h, m, n)


def _check(att, fn, args, tol):
    with torch.no_grad():
        out = att(*[a.float() if tol > 1e-8 else a for a in args])
        exp = fn(*args)
    outs, exps = (out, exp) if isinstance(out, tuple) else ((out,), (exp,))
    for o, x in zip(outs, exps):
        assert o.shape == x.shape
        finite = torch.isfinite(x)
        # rows whose every key is masked: eager's softmax gives NaN, einattn 0 (docs/spec.md)
        assert torch.equal(torch.isfinite(o) | ~finite, torch.ones_like(finite)), "non-finite where eager is finite"
        err = (o.double() - x)[finite].abs().max().item() if finite.any() else 0.0
        assert err <= tol * max(x[finite].abs().max().item() if finite.any() else 1.0, 1.0), err


@settings(max_examples=EXAMPLES, derandomize=SEED is None, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(FUNCTIONS, st.integers(0, 3))
def test_random_functions_match_eager_on_the_reference(choice, shape_pick):
    spelling, mods, mask, weighting, gqa, with_lse = choice
    fn = make_function(*choice)
    att = einattn.attention(fn, target="reference")
    h, g = (4, 2) if gqa else (4, 4)
    n = 53
    m = (37, 53, 1, 20)[shape_pick]
    _check(att, fn, _inputs(2, h, g, m, n, 16, 8, 1), 1e-10)
    _check(att, fn, _inputs(1, 2 * h, 2 * g, max(m - 7, 1), n + 30, 32, 4, 2), 1e-10)


@pytest.mark.cpu
@settings(max_examples=max(EXAMPLES // 3, 1), derandomize=SEED is None, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(FUNCTIONS)
def test_random_functions_on_the_cpu_kernel(choice):
    spelling, mods, mask, weighting, gqa, with_lse = choice
    fn = make_function(*choice)
    att = einattn.attention(fn, target="cpu")
    h, g = (4, 2) if gqa else (4, 4)
    _check(att, fn, _inputs(2, h, g, 29, 61, 16, 8, 3), 1e-4)


if SEED is not None:
    test_random_functions_match_eager_on_the_reference = seed(int(SEED))(
        test_random_functions_match_eager_on_the_reference)
    test_random_functions_on_the_cpu_kernel = seed(int(SEED))(test_random_functions_on_the_cpu_kernel)
