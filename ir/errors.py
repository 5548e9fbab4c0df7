"""The one error hierarchy of einattn.

It lives in the bottom layer (``ir``) because the IR verifier raises it and
``ir`` imports nothing else of ours; ``einattn`` re-exports every name.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Loc:
    """A place in a spec: file (or ``<string>``), 1-based line and column."""
    file: str = "<spec>"
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"

    def shift(self, dcol: int) -> "Loc":
        return Loc(self.file, self.line, self.col + dcol)


class EinattnError(Exception):
    """Base class of every error einattn raises on purpose."""


class SpecError(EinattnError, ValueError):
    """A spec (or a call's inputs) is malformed.

    The message names the place, what was expected, what was found and the fix.
    """

    def __init__(self, what: str, *, loc: Loc | None = None, expected: str = "",
                 found: str = "", fix: str = ""):
        self.loc, self.what, self.expected, self.found, self.fix = loc, what, expected, found, fix
        parts = [f"{loc}: {what}" if loc is not None else what]
        if expected:
            parts.append(f"expected {expected}")
        if found:
            parts.append(f"found {found}")
        msg = "; ".join(parts)
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class UnsupportedError(EinattnError, NotImplementedError):
    """A feature, target or combination that einattn does not support (yet)."""


class BackendUnavailable(EinattnError, RuntimeError):
    """The backend exists but cannot run here (no GPU, missing package, ...)."""


class TuningError(EinattnError, RuntimeError):
    """The autotuner or its database failed."""
