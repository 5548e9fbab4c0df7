"""The CUDA and ROCm backend on Triton: render (``render.py``, ``expr.py``), tunables and their
checks (``config.py``), GPU data (``hardware.py``, ``targets/*.yaml``), what launch and
ahead-of-time compile share (``abi.py``), the compiler (``aot.py``), the source loader
(``loader.py``) and the backend (``backend.py``). Importing it does not import Triton."""
from .backend import TritonArtifact, TritonBackend
from .config import TritonConfig

__all__ = ["TritonArtifact", "TritonBackend", "TritonConfig"]
