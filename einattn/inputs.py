"""Shapes, params and random inputs from text: shared by the CLI and the bench harness.

Every bad value is a SpecError at ``<command line>`` naming what was
expected, what was found and the fix, so the CLI exits 2 (bad input) with one
line instead of a traceback, and exit 1 keeps meaning "checked and mismatched".
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

import torch

from einattn.backends.torch.check import TOLERANCE, random_inputs, rel_error  # noqa: F401 (re-exported)
from einattn.ir import Loc, SpecError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16,
          "fp16": torch.float16}

# Kernels index with 32-bit integers, so every dim size must be below 2**31.
MAX_SIZE = 2 ** 31 - 1
CMDLINE = Loc("<command line>")
CGROUP = Path("/sys/fs/cgroup")


def parse_assignments(text: str | None, what: str, number: bool = True) -> dict:
    """``"a=1,b=2.5"`` -> {"a": 1, "b": 2.5}; ints stay ints. A name given twice is an error.

    With ``number`` every value must be an int or a float; without, other text stays text.
    """
    out: dict = {}
    if not text:
        return out
    for part in text.split(","):
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k or not v:
            raise SpecError(f"bad --{what} item {part!r}", loc=CMDLINE, expected="name=value[,name=value]",
                            found=repr(text), fix="separate items with ',' and give each one a value")
        if k in out:
            raise SpecError(f"--{what} gives '{k}' twice", loc=CMDLINE, expected="each name once",
                            found=repr(text), fix=f"keep one '{k}=...'")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                if number:
                    raise SpecError(f"bad --{what} value {part!r}", loc=CMDLINE, expected="a number",
                                    found=repr(v)) from None
                out[k] = v
    return out


def parse_params(items: list[str] | None) -> dict:
    """Every ``--param NAME=VALUE`` (each may hold several, comma-separated) -> {name: finite number}."""
    out: dict = {}
    for it in items or []:
        for k, v in parse_assignments(it, "param").items():
            if k in out:
                raise SpecError(f"--param gives '{k}' twice", loc=CMDLINE, expected="each param once",
                                found=f"{k}={out[k]} and {k}={v}", fix=f"keep one --param {k}=...")
            if not math.isfinite(v):
                raise SpecError(f"--param {k} is not finite", loc=CMDLINE, expected="a finite number",
                                found=f"{k}={v}")
            out[k] = v
    return out


def input_dims(spec) -> list[str]:
    """The dims ``--shape`` sizes: every index of the spec's inputs, in order of appearance."""
    return list(dict.fromkeys(i for t in spec.inputs for i in t.indices))


def check_shape(spec, shape: dict, what: str = "shape") -> dict[str, int]:
    """``shape`` if it sizes exactly the spec's input dims with integers in [1, MAX_SIZE]; else a SpecError
    naming the option ``--<what>``."""
    dims = input_dims(spec)
    example = ",".join(f"{k}={shape[k]}" if type(shape.get(k)) is int and 1 <= shape[k] <= MAX_SIZE
                       else f"{k}=4" for k in dims)
    given = ",".join(f"{k}={v}" for k, v in shape.items()) or "nothing"
    unknown = [k for k in shape if k not in dims]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [d for d in dims if d not in shape], n=1)
        which = "which is not a dim" if len(unknown) == 1 else "which are not dims"
        raise SpecError(f"--{what} names {', '.join(map(repr, unknown))}, {which} of spec '{spec.name}'",
                        loc=CMDLINE, expected="sizes for exactly " + ", ".join(dims), found=given,
                        fix=(f"did you mean '{close[0]}'? e.g." if close else "remove it:" if len(unknown) == 1
                             else "remove them:") + f" --{what} {example}")
    missing = [k for k in dims if k not in shape]
    if missing:
        raise SpecError(f"--{what} does not give every dim", loc=CMDLINE,
                        expected="sizes for " + ", ".join(missing), found=given,
                        fix=f"add them to --{what}, e.g. --{what} {example}")
    for k, v in shape.items():
        if type(v) is int and 1 <= v <= MAX_SIZE:
            continue
        if type(v) is int:
            fix = f"a dim has at least 1 element: {k}=1" if v < 1 else f"use at most {k}={MAX_SIZE}"
        elif isinstance(v, float) and v.is_integer() and 1 <= v <= MAX_SIZE:
            fix = f"write {k}={int(v)}"
        else:
            fix = f"give whole numbers, e.g. --{what} {example}"
        text = str(v) if len(str(v)) <= 24 else f"{str(v)[:12]}... ({len(str(v))} digits)"
        raise SpecError(f"bad size of dim '{k}'", loc=CMDLINE,
                        expected=f"a positive integer below 2**31 = {MAX_SIZE + 1}", found=f"{k}={text}", fix=fix)
    return shape


def parse_shape(text: str | None, spec, what: str = "shape") -> dict[str, int]:
    """``--shape`` (or ``--<what>``) text -> {dim: size}, checked against the spec (see ``check_shape``)."""
    return check_shape(spec, parse_assignments(text, what), what)


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit; None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            pass
    for limit, usage in (("memory.max", "memory.current"),                                # cgroup v2
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):   # cgroup v1
        try:
            cap = (CGROUP / limit).read_text().strip()
            used = int((CGROUP / usage).read_text())
        except (OSError, ValueError):
            continue
        if cap.isdigit():
            avail = int(cap) - used if avail is None else min(avail, int(cap) - used)
        break
    return avail


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def check_memory(spec, shape: dict, dtype: torch.dtype, reference: bool = False) -> None:
    """Refuse, before allocating anything, a shape whose tensors cannot fit in the available memory.

    Counts a lower bound: the inputs in ``dtype`` plus the two float64 temporaries drawing the
    largest one takes, and with ``reference`` every statement the float64 reference materialises.
    """
    numel = [math.prod(shape[i] for i in t.indices) for t in spec.inputs]
    parts = {"inputs": sum(numel) * dtype.itemsize + 2 * 8 * max(numel, default=0)}
    if reference:
        parts["float64 reference"] = sum(8 * math.prod(shape.get(i, 1) for i in s.indices) for s in spec.stmts)
    need, avail = sum(parts.values()), available_memory()
    if avail is not None and need > avail:
        raise SpecError("the shape needs more memory than is available", loc=CMDLINE,
                        expected=f"at most {_gib(avail)} (available now)",
                        found=f"at least {_gib(need)} at " + ",".join(f"{k}={v}" for k, v in shape.items())
                        + " (" + ", ".join(f"{k} {_gib(v)}" for k, v in parts.items()) + ")",
                        fix="use smaller sizes")


def make_inputs(spec, shape: dict, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs (randn * 0.5, ``random_inputs``) for every input of the spec at the given sizes.

    The shape is checked first (``check_shape``, ``check_memory``): bad sizes are SpecErrors, not
    torch errors.
    """
    check_memory(spec, check_shape(spec, shape), dtype)
    return random_inputs(spec, shape, dtype, seed)
