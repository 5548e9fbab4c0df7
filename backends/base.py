"""The backend interface, target strings and the registry.

A backend turns a plan (+ config) into something callable on tensors:
``supports(target)``, ``prepare(plan, target, config, **options) -> artifact``
(render and build; options: ``interpret`` for GPU targets), ``launch(artifact, inputs, sizes, params) -> {output: tensor}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from einattn.ir import UnsupportedError

TARGET_KINDS = ("reference", "streaming", "cpu", "cuda", "rocm")


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    arch: str | None = None

    def __str__(self) -> str:
        return self.kind if self.arch is None else f"{self.kind}:{self.arch}"


def parse_target(text: str) -> Target:
    if not isinstance(text, str):
        raise UnsupportedError(f"target must be a string such as 'cpu' or 'cuda:sm_90', not {text!r}")
    kind, _, arch = text.strip().partition(":")
    if kind not in TARGET_KINDS:
        raise UnsupportedError(f"unknown target {text!r}; expected one of "
                               + ", ".join(TARGET_KINDS) + " (cuda:sm_XX, rocm:gfxXXX)")
    if arch and kind in ("reference", "streaming", "cpu"):
        raise UnsupportedError(f"target '{kind}' takes no architecture suffix (got {text!r})")
    return Target(kind, arch or None)


class Backend(Protocol):
    name: str
    config_keys: tuple[str, ...]

    def supports(self, target: Target) -> bool: ...
    def prepare(self, plan, target: Target, config: dict, **options): ...
    def launch(self, artifact, inputs: dict, sizes: dict, params: dict) -> dict: ...


def check_config(backend_name: str, config: dict, allowed: dict[str, type]) -> dict:
    """Reject unknown or ill-typed config keys instead of ignoring them."""
    out = {}
    for k, v in (config or {}).items():
        if k not in allowed:
            raise UnsupportedError(f"config key {k!r} is not understood by the {backend_name} backend; "
                                   f"it accepts: {', '.join(allowed) or 'no keys'}")
        if not isinstance(v, allowed[k]) or isinstance(v, bool) or (isinstance(v, int) and v < 1):
            raise UnsupportedError(f"config {k}={v!r} for the {backend_name} backend must be a positive "
                                   f"{allowed[k].__name__}")
        out[k] = v
    return out
