"""einattn.backends: executors and code generators behind one small interface."""
from einattn.ir import UnsupportedError

from .base import TARGET_KINDS, Backend, Target, check_config, parse_target
from .executors import ReferenceBackend, StreamingBackend

_BUILT = {"reference": ReferenceBackend, "streaming": StreamingBackend}
_PLANNED = {
    "cpu": "the CPU backend on TVM",
    "cuda": "the CUDA backend on Triton",
    "rocm": "the ROCm backend on Triton",
}


def get_backend(target: Target) -> Backend:
    if target.kind in _BUILT:
        return _BUILT[target.kind]()
    raise UnsupportedError(f"target '{target}' is not built yet ({_PLANNED[target.kind]} is planned); "
                           f"targets that run today: {', '.join(_BUILT)}")


def built_targets() -> tuple[str, ...]:
    return tuple(_BUILT)


__all__ = ["TARGET_KINDS", "Backend", "Target", "check_config", "parse_target", "get_backend",
           "built_targets", "ReferenceBackend", "StreamingBackend"]
