"""argparse types shared by the subcommands: a bad value is argparse's usage error (exit 2,
one line). Shapes, params and inputs from text live in ``einattn/inputs.py`` (the bench
harness uses them too)."""
from __future__ import annotations

import argparse
import math


def _int_in(text: str, lo: int, hi: int | None, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise argparse.ArgumentTypeError(f"expected {what}, found {v}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1 (repetitions, threads)."""
    return _int_in(text, 1, None, "an integer >= 1")


def seed_int(text: str) -> int:
    """A seed torch.Generator.manual_seed accepts: -2**63 <= seed < 2**64."""
    return _int_in(text, -2 ** 63, 2 ** 64 - 1, "an integer seed in [-2**63, 2**64)")


def tolerance(text: str) -> float:
    """A finite relative error >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 such as 1e-4, found {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 such as 1e-4, found {text!r}")
    return v
