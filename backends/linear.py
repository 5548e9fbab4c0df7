"""Linear cascades on kernel targets: the quadratic kernel or the chunked scan, chosen by cost.

Every kernel backend (cpu, cuda, rocm) that can run a scan exposes
``scan(x, mask, chunk, schedule, state, **options) -> (num, final state)`` with the
contract of ``backends.torch.linear.scan_torch``; :class:`LinearBackend` wraps the
target's backend for cascades that ``compiler.linear.linear_form`` accepts. It keeps
both algorithms where both are legal (the quadratic kernel may refuse the cascade:
then the scan is the only one, and ``ALGORITHM='quadratic'`` raises that refusal)
and picks one per call (:func:`einattn.compiler.linear.choose`).

Config keys (the rest go to the quadratic kernel):
  ALGORITHM  "auto" | "quadratic" | "chunked"
  CHUNK      0 (by cost) | 16 | 32 | 64 | 128
  SCHEDULE   "auto" | "fused" | "materialised"
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from einattn.compiler.linear import Choice, LinearForm, choose
from einattn.ir import UnsupportedError

from .base import all_finite, complete_params, threads
from .torch.linear import finish, scan_inputs

KEYS = {"ALGORITHM": ("auto", "quadratic", "chunked"), "CHUNK": (0, 16, 32, 64, 128),
        "SCHEDULE": ("auto", "fused", "materialised")}


@dataclass
class LinearArtifact:
    form: LinearForm
    plan: object
    quadratic: object | None          # the inner backend's artifact, None where it refuses the cascade
    refusal: str | None               # why the quadratic kernel cannot run it
    config: dict
    options: dict = field(default_factory=dict)

    efficiency: float = 0.35          # the scan's FLOP rate relative to the quadratic kernel's
    chunk: int = 64                   # the backend's CHUNK when the config leaves it to the cost

    def choice(self, sizes: dict, threads: int) -> Choice:
        return choose(self.form, sizes, self.config, self.quadratic is not None, self.refusal, threads,
                      self.efficiency, self.chunk)


class _HiddenNonfinite(UnsupportedError):
    """A non-finite value that the causal mask hides from earlier queries: the quadratic kernel
    reproduces the cascade's 0 * NaN there (it visits every key tile, ``hidden_nonfinite``); a
    scan cannot."""


def split_config(config: dict) -> tuple[dict, dict]:
    mine = {k: config[k] for k in KEYS if k in config}
    for k, v in mine.items():
        if v not in KEYS[k]:
            raise UnsupportedError(f"config {k}={v!r}: expected one of {', '.join(map(repr, KEYS[k]))}")
    return mine, {k: v for k, v in config.items() if k not in KEYS}


class LinearBackend:
    """A kernel backend with the chunked scan beside its quadratic kernel."""

    def __init__(self, inner, form: LinearForm):
        self.inner, self.form = inner, form
        self.name = inner.name
        self.config_keys = tuple(inner.config_keys) + tuple(KEYS)

    def __getattr__(self, name):              # space, fingerprint, ...: the quadratic kernel's
        return getattr(self.inner, name)

    def prepare(self, plan, target, config: dict, **options) -> LinearArtifact:
        mine, rest = split_config(dict(config or {}))
        quad, refusal = None, None
        try:
            quad = self.inner.prepare(plan, target, rest, **options)
        except UnsupportedError as e:
            if mine.get("ALGORITHM") == "quadratic" or rest:
                raise
            refusal = str(e)
        if mine.get("ALGORITHM") == "chunked" and rest:
            raise UnsupportedError(f"config {sorted(rest)} configures the quadratic kernel, but "
                                   f"ALGORITHM='chunked' never runs it: drop those keys or use ALGORITHM='auto'")
        return LinearArtifact(self.form, plan, quad, refusal, mine, options,
                              getattr(self.inner, "scan_efficiency", 0.35), getattr(self.inner, "scan_chunk", 64))

    def describe(self, art: LinearArtifact, sizes: dict, params: dict | None = None) -> str:
        ch = art.choice(sizes, threads())
        text = ch.describe()
        if ch.algorithm == "quadratic":
            text += "\n" + self.inner.describe(art.quadratic, sizes, params)
        return text

    def launch(self, art: LinearArtifact, inputs: dict, sizes: dict, params: dict) -> dict:
        ch = art.choice(sizes, threads())
        if ch.algorithm == "chunked":
            try:
                out, _ = self.run_scan(art, ch, inputs, sizes, params, None)
                return {art.form.output: out}
            except _HiddenNonfinite as e:
                if art.quadratic is None:
                    raise UnsupportedError(str(e)) from None
        return self.inner.launch(art.quadratic, inputs, sizes, params)

    def run_scan(self, art: LinearArtifact, ch, inputs: dict, sizes: dict, params: dict, state):
        """``(output, final state)`` of the chunked scan (``state``: the state before position 0)."""
        params = complete_params(art.plan.cascade, sizes, params)
        dtype = next(iter(inputs.values())).dtype if inputs else torch.float32
        x = scan_inputs(art.form, {k: v.float() for k, v in inputs.items()}, sizes, params, ch.chunk)
        f = art.form
        if state is not None:
            want = (*x.grid, x.F.shape[-1], x.V.shape[-1])
            if tuple(state.shape) != want:
                raise UnsupportedError(f"state has shape {tuple(state.shape)}; this scan's state is {list(want)} "
                                       f"([{', '.join(f.grid)}], D, E'), E' = the value columns"
                                       + (" then one per normaliser" if len(f.jobs) > 1 else ""))
            state = state.reshape(-1, *want[-2:]).float()
        if f.causal and not all_finite(x.V):
            raise _HiddenNonfinite(
                f"{f.output}: a value holds NaN or inf; the cascade as written multiplies it by the 0 of the "
                f"causal mask for every earlier query (0 * NaN = NaN, the reference's answer), which a scan "
                f"never does (the keys after a query are not in its state): replace them (torch.nan_to_num) or "
                f"use target='reference'" + ("" if art.quadratic is None else "; calls run the quadratic kernel"))
        num, final = self.inner.scan(x, f.mask, ch.chunk, ch.schedule, state, **art.options)
        return finish(f, x, num, sizes).to(dtype), final.reshape(*x.grid, *final.shape[-2:])

