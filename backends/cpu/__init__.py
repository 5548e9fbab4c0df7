"""The CPU backend on TVM: render (``render.py``, ``expr.py``), build and cache (``build.py``),
TVM's runtime and threads (``runtime.py``), the host (``host.py``), the backend (``backend.py``)."""
from .backend import CpuArtifact, CpuBackend
from .config import CpuConfig

__all__ = ["CpuArtifact", "CpuBackend", "CpuConfig"]
