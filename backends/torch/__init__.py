"""The torch executors: the float64 reference (``reference.py``), the streaming executor
(``streaming.py``), the evaluator of one statement both use (``evaluator.py``), and the two
as backends (``executors.py``)."""
from .executors import ReferenceBackend, StreamingBackend
from .reference import run_reference
from .streaming import run_streaming

__all__ = ["ReferenceBackend", "StreamingBackend", "run_reference", "run_streaming"]
