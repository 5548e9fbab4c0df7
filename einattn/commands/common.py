"""Argument parsing shared by the subcommands: shapes, params, configs, random inputs."""
from __future__ import annotations

import torch

from einattn.ir import Loc, SpecError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16,
          "fp16": torch.float16}


def parse_assignments(text: str | None, what: str, number: bool = True) -> dict:
    """``"a=1,b=2.5"`` -> {"a": 1, "b": 2.5}; ints stay ints."""
    out: dict = {}
    if not text:
        return out
    for part in text.split(","):
        k, eq, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k or not v:
            raise SpecError(f"bad {what} {part!r}", loc=Loc("<command line>"), expected="name=value[,name=value]")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                if number:
                    raise SpecError(f"bad {what} value {part!r}", loc=Loc("<command line>"),
                                    expected="a number") from None
                out[k] = v
    return out


def parse_params(items: list[str] | None) -> dict:
    out: dict = {}
    for it in items or []:
        out.update(parse_assignments(it, "param"))
    return out


def make_inputs(spec, shape: dict, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs (randn * 0.5) for every input of the spec at the given sizes."""
    missing = [i for t in spec.inputs for i in t.indices if i not in shape]
    if missing:
        raise SpecError("--shape does not give every dim", loc=Loc("<command line>"),
                        expected="sizes for " + ", ".join(dict.fromkeys(missing)),
                        found=", ".join(f"{k}={v}" for k, v in shape.items()) or "nothing",
                        fix="add them to --shape, e.g. --shape " + ",".join(
                            f"{i}=4" for i in dict.fromkeys(i for t in spec.inputs for i in t.indices)))
    g = torch.Generator().manual_seed(seed)
    return {t.name: (torch.randn([shape[i] for i in t.indices], generator=g, dtype=torch.float64) * 0.5).to(dtype)
            for t in spec.inputs}


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| over entries where want is finite; inf if NaN/inf appears wrongly."""
    got, want = got.double(), want.double()
    if not torch.equal(torch.isfinite(got), torch.isfinite(want)):
        return float("inf")
    fin = torch.isfinite(want)
    if not fin.any():
        return 0.0
    scale = want[fin].abs().max().clamp_min(1e-30)
    return float((got[fin] - want[fin]).abs().max() / scale)


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
