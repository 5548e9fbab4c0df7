"""einattn: attention variants as einsum cascades, compiled to fused kernels.

>>> import einattn
>>> einattn.explain("softmax").passes
1
"""
from einattn.ir.errors import (BackendUnavailable, EinattnError, SpecError, TuningError,
                               UnsupportedError)

from .specs import Spec, load_spec, zoo_names
from .kernel import Kernel, compile, explain, explain_backward
from .decorator import Attention, attention
from .flex import flex_attention

__version__ = "0.1.0"
__all__ = ["BackendUnavailable", "EinattnError", "SpecError", "TuningError", "UnsupportedError",
           "Spec", "load_spec", "zoo_names", "Kernel", "compile", "explain", "explain_backward", "Attention", "attention", "flex_attention"]
