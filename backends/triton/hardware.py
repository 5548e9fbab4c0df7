"""GPU targets as data: ``backends/triton/targets/*.yaml``, one file per GPU model, every number with its source.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from einattn.ir import UnsupportedError

from ..base import Target

TARGET_DIR = Path(__file__).resolve().parent / "targets"
MAX_HEAD_DIM = 256          # padded head dim one program holds in registers (FlashAttention's limit too)
DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64"}


@dataclass(frozen=True)
class HardwareTarget:
    """One GPU model; every number has its source in ``sources``."""
    name: str
    kind: str                     # cuda | rocm
    arch: str                     # sm_90, gfx942, ...
    sms: int                      # SMs (NVIDIA) or CUs (AMD)
    warp_size: int
    max_threads_per_block: int
    shared_memory_per_block: int  # bytes (LDS per workgroup on AMD)
    shared_memory_per_sm: int
    registers_per_sm: int         # 32-bit registers
    max_registers_per_thread: int
    dtypes: tuple[str, ...]
    peak_flops_fp16: float
    peak_flops_bf16: float
    memory_bandwidth: float       # bytes/s
    sources: dict = field(default_factory=dict, compare=False)
    compute_capability: int | None = None
    max_sgprs: int | None = None
    default: bool = True

    @property
    def triton_target(self):
        from triton.backends.compiler import GPUTarget
        if self.kind == "cuda":
            return GPUTarget("cuda", self.compute_capability, self.warp_size)
        return GPUTarget("hip", self.arch, self.warp_size)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "default"}
        out["dtypes"] = list(self.dtypes)
        return out


@functools.lru_cache(maxsize=1)
def all_targets() -> tuple[HardwareTarget, ...]:
    out = []
    for p in sorted(TARGET_DIR.glob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        d["dtypes"] = tuple(d["dtypes"])
        for k in ("peak_flops_fp16", "peak_flops_bf16", "memory_bandwidth"):
            d[k] = float(d[k])        # YAML 1.1 reads 312.0e12 (no exponent sign) as a string
        missing = [k for k in d if k not in ("sources", "default", "dtypes", "name", "kind", "arch")
                   and k not in d.get("sources", {}) and k not in ("compute_capability", "max_threads_per_block")]
        if missing:
            raise ValueError(f"{p}: no source given for {missing}")
        out.append(HardwareTarget(**d))
    return tuple(out)


DEFAULT_ARCH = {"cuda": "sm_90", "rocm": "gfx942"}


def load_target(target: Target) -> HardwareTarget:
    """The hardware behind ``cuda[:sm_XX]`` / ``rocm[:gfxXXX]`` (default: sm_90, gfx942)."""
    arch = target.arch or DEFAULT_ARCH.get(target.kind)
    cands = [t for t in all_targets() if t.kind == target.kind and t.arch == arch]
    if not cands:
        known = ", ".join(f"{t.kind}:{t.arch} ({t.name})" for t in all_targets() if t.default)
        raise UnsupportedError(f"no hardware data for target '{target.kind}:{arch}'; known targets: {known} "
                               f"(add a YAML file under backends/triton/targets/ for another GPU)")
    return next((t for t in cands if t.default), cands[0])
