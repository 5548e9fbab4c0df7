"""Plain PyTorch attention -> einsum cascade: ``torch.export`` with dynamic dims, decomposed to core
ATen (keeping ``logsumexp`` and ``softplus``, which the IR has), converted node by node
(``convert.py``, ``ops.py``) and named by role (``emit.py``). See docs/decorator.md."""
from .program import Traced, trace

__all__ = ["Traced", "trace"]
