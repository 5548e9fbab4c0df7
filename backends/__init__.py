"""einattn.backends: executors and code generators behind one small interface.

Backends are registered by target kind, one subpackage each: ``torch/`` (the
float64 reference and the streaming executor), ``cpu/`` (TVM) and ``triton/``
(CUDA and ROCm). ``base.py`` holds the interface every backend implements. The
code-generating backends are imported on first use, and import TVM or Triton
only when they build or run a kernel.
"""
from __future__ import annotations

import importlib
import importlib.util

from einattn.ir import UnsupportedError

from .base import TARGET_KINDS, Backend, Target, check_config, parse_target
from .torch import ReferenceBackend, StreamingBackend

# kind -> (module, class, what it is)
REGISTRY = {
    "reference": ("einattn.backends.torch", "ReferenceBackend", "the float64 reference executor"),
    "streaming": ("einattn.backends.torch", "StreamingBackend", "the streaming executor (torch)"),
    "cpu": ("einattn.backends.cpu", "CpuBackend", "the CPU backend on TVM"),
    "cuda": ("einattn.backends.triton", "TritonBackend", "the CUDA backend on Triton"),
    "rocm": ("einattn.backends.triton", "TritonBackend", "the ROCm backend on Triton"),
}


def get_backend(target: Target) -> Backend:
    mod, cls, what = REGISTRY[target.kind]
    try:
        m = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:
            raise
        raise UnsupportedError(f"target '{target}' is not built yet ({what} is planned); targets that run "
                               f"today: {', '.join(built_targets())}") from None
    return getattr(m, cls)()


def built_targets() -> tuple[str, ...]:
    """Target kinds whose backend module is present (importing it may still need TVM/Triton)."""
    return tuple(kind for kind, (mod, _, _) in REGISTRY.items() if importlib.util.find_spec(mod) is not None)


__all__ = ["TARGET_KINDS", "Backend", "Target", "check_config", "parse_target", "get_backend",
           "built_targets", "REGISTRY", "ReferenceBackend", "StreamingBackend"]
