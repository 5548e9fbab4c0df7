"""The host side of a linear scan, shared by every target, and the scan in PyTorch.

A :class:`~einattn.compiler.linear.LinearForm` runs in three steps:

1. :func:`scan_inputs`: the features cascade (F, G, V per scan, R, the decay a(m)) is
   evaluated with the torch evaluator (O(N·(D+E)) work: elementwise feature maps,
   key-side statistics); scans sharing F and G share one pass, V gaining a column
   of ones per normaliser. The decay goes chunk-relative in float64: ``ad[p] =
   a(p) - a(start of p's chunk - 1)``, so kernels never form ``exp(a(m)) * exp(-a(n))``.
2. a backend's scan kernel: ``num[g, m, :] = sum_n F[m].G[n] W[m, n] V[n, :]``
   carrying the state ``S[D, E']`` across chunks of ``C`` keys (:func:`scan_torch` is
   the PyTorch version of both schedules; the CPU and Triton kernels follow it);
3. :func:`finish`: ``O = R * num / Z`` per normaliser.

The state before position 0 (``state=``) enters query m with the weight ``W(m, -1)``:
``exp(a(m) - a(-1))``, a(-1) evaluated at position -1 with inputs read there as 0
(a cumulative log-gate starts at 0). The final state is the state after the last key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from einattn.compiler.linear import LinearForm
from einattn.ir import Expr, Op, SpecError, Loc

from .reference import run_reference


@dataclass
class ScanInputs:
    F: torch.Tensor          # [G, M, D] float32
    K: torch.Tensor          # [G, N, D]
    V: torch.Tensor          # [G, N, E'] (value columns, then one column of ones per normaliser)
    ad: torch.Tensor | None  # [G, M] float32, a(p) - a(chunk start - 1) (decayed only)
    R: torch.Tensor | None   # [grid..., M, E]; None where R = 1
    grid: tuple[int, ...]
    value: tuple[int, ...]
    columns: int             # E (value columns, flattened)


def _features(form: LinearForm, inputs: dict, sizes: dict, params: dict, dtype) -> dict:
    c = form.features
    full = dict(sizes)
    for new, old in form.renamed.items():
        full[new] = sizes[old]
    return run_reference(c, inputs, full, params, dtype)


def _decay_at_minus_one(form: LinearForm, sizes: dict, params: dict) -> torch.Tensor:
    """a(-1) per grid point: the decay's expression at query position -1, input reads as 0."""
    from einattn.ir import Cascade, Reduce, Stmt
    m = form.query_index
    a = form.decay.replace(lambda x: Expr.const(0.0) if x.op is Op.READ else
                           Expr.const(-1.0) if x.op is Op.INDEX and x.arg == m else None)
    s = Stmt("__A1", tuple(i for i in form.grid if i in a.indices()), Reduce.SUM, a)
    c = Cascade((), form.features.params, (s,), ("__A1",), form.key_index)
    v = run_reference(c, {}, sizes, params, torch.float64)["__A1"]
    return v.reshape([sizes[i] if i in s.indices else 1 for i in form.grid]).expand(
        [sizes[i] for i in form.grid])


def scan_inputs(form: LinearForm, inputs: dict, sizes: dict, params: dict, chunk: int) -> ScanInputs:
    m, n = form.query_index, form.key_index
    if form.causal and sizes[m] != sizes[n]:
        raise SpecError(f"a causal linear scan needs as many queries as keys ('{m}' = {sizes[m]}, "
                        f"'{n}' = {sizes[n]})", loc=Loc(form.features.file),
                        expected=f"'{m}' = '{n}'", fix="pass a state= of the earlier keys for a continuation, "
                        "or use algorithm='quadratic'")
    vals = _features(form, inputs, sizes, params, torch.float32)
    grid = tuple(sizes[i] for i in form.grid)
    gsz = math.prod(grid)
    dsz = math.prod(sizes[form.renamed.get(i, i)] for i in form.contract)
    esz = math.prod(sizes[i] for i in form.value)
    M, N = sizes[m], sizes[n]
    job0 = form.jobs[0]
    F = vals[job0.query].reshape(gsz, M, dsz)
    K = vals[job0.key].reshape(gsz, N, dsz)
    cols = [vals[job0.value].reshape(gsz, N, esz)]
    for job in form.jobs[1:]:
        assert (job.query, job.key) == (job0.query, job0.key), "compiler/linear.py shares a scan's features"
        cols.append(torch.ones(gsz, N, 1, device=F.device))
    V = torch.cat(cols, -1) if len(cols) > 1 else cols[0]
    ad = None
    if form.decay is not None:
        a = _features_decay(vals, gsz, M)
        am1 = _decay_at_minus_one(form, sizes, params).reshape(gsz, 1)
        start = (torch.arange(M, device=a.device) // chunk) * chunk
        prev = torch.where(start > 0, a[:, (start - 1).clamp(min=0)], am1.to(a.device))
        ad = (a - prev).float().contiguous()
    R = vals["__R"] if not _is_one(form.features.stmt("__R").expr) else None
    return ScanInputs(F.contiguous(), K.contiguous(), V.contiguous(), ad, R, grid, tuple(
        sizes[i] for i in form.value), esz)


def _features_decay(vals, gsz, M):
    return vals["__A"].to(torch.float64).reshape(gsz, M)


def scan_torch(x: ScanInputs, mask: str, chunk: int, schedule: str = "fused",
               state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked scan in PyTorch: ``(num [G, M, E'], final state [G, D, E'])``.

    ``fused`` walks the chunks carrying the state (Lightning Attention-2);
    ``materialised`` first stores each chunk's incoming state, then computes every
    chunk's output independently (flash-linear-attention's ``chunk`` form).
    """
    F, K, V = x.F, x.K, x.V
    g, M, D = F.shape
    E = V.shape[-1]
    if schedule not in ("fused", "materialised"):
        raise ValueError(f"schedule {schedule!r}: expected 'fused' or 'materialised'")
    dev = F.device
    S = torch.zeros(g, D, E, device=dev) if state is None else state.reshape(g, D, E).float().clone()
    if mask == "none":                  # no decay without a mask (compiler/linear.py refuses it)
        S = S + K.transpose(1, 2) @ V
        return F @ S, S
    out = torch.empty(g, M, E, device=dev)
    tri = torch.ones(chunk, chunk, device=dev).tril(0 if mask == "causal" else -1).bool()
    chunks = [(c0, min(c0 + chunk, M)) for c0 in range(0, M, chunk)]

    def update(S, c0, c1):
        Kc, Vc = K[:, c0:c1], V[:, c0:c1]
        if x.ad is None:
            return S + Kc.transpose(1, 2) @ Vc
        last = x.ad[:, c1 - 1:c1]
        return S * torch.exp(last).unsqueeze(-1) + (Kc * torch.exp(last - x.ad[:, c0:c1]).unsqueeze(-1)).mT @ Vc

    def output(S, c0, c1):
        Fc, Kc, Vc = F[:, c0:c1], K[:, c0:c1], V[:, c0:c1]
        w = tri[:c1 - c0, :c1 - c0]
        if x.ad is None:
            out[:, c0:c1] = (Fc @ Kc.mT).masked_fill(~w, 0.0) @ Vc + Fc @ S
            return
        adc = x.ad[:, c0:c1]
        A = (Fc @ Kc.mT) * torch.where(w, torch.exp(adc.unsqueeze(-1) - adc.unsqueeze(-2)), 0.0)
        out[:, c0:c1] = A @ Vc + (Fc * torch.exp(adc).unsqueeze(-1)) @ S

    if schedule == "fused":              # one walk over the chunks, the state carried
        for c0, c1 in chunks:
            output(S, c0, c1)
            S = update(S, c0, c1)
        return out, S
    states = []                          # materialised: every chunk's incoming state, then outputs
    for c0, c1 in chunks:
        states.append(S)
        S = update(S, c0, c1)
    for (c0, c1), Sc in zip(chunks, states):
        output(Sc, c0, c1)
    return out, S


def finish(form: LinearForm, x: ScanInputs, num: torch.Tensor, sizes: dict) -> torch.Tensor:
    """``O = R * num / Z`` in the output's layout [grid..., m, value...]."""
    M = sizes[form.query_index]
    e = x.columns
    o = num[..., :e]
    for j, p in enumerate(form.powers[1:]):
        z = num[..., e + j:e + j + 1]
        o = torch.where((o == 0) & (z == 0), torch.zeros_like(o), o / z)
    o = o.reshape(*x.grid, M, *x.value)
    return o.contiguous() if x.R is None else (o * x.R).contiguous()


def _is_one(e) -> bool:
    return e.op is Op.CONST and e.arg == 1.0
