"""Rendering a KernelPlan into the TVMScript source of one fused CPU kernel: the template
(``templates/cpu/attention.tvmscript.jinja``) filled from the view of the config's program
(``view.KernelView`` for the tile program, ``decode.DecodeView`` for the decode program).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources

from einattn.compiler import KernelPlan

from .config import CpuConfig
from .decode import DecodeView
from .expr import lower
from .pairs import dot, usable
from .view import KernelView, split_layout, workspace_numel

__all__ = ["render", "split_layout", "template_hash", "template_source", "workspace_numel"]

TEMPLATE = "attention.tvmscript.jinja"


# -- template loading ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def template_source() -> str:
    return (importlib.resources.files("einattn.templates") / "cpu" / TEMPLATE).read_text()


def template_hash() -> str:
    return hashlib.sha256(template_source().encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _template():
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    return env.from_string(template_source())


# -- entry point --------------------------------------------------------------------

def render(kp: KernelPlan, cfg: CpuConfig, static: dict[str, int], vec: int, dtypes=None,
           bf16_dot: bool = False) -> str:
    """TVMScript source of the fused forward kernel (one ``main`` prim_func); ``dtypes`` names
    the inputs and outputs that are not float32 (``io_dtypes``); ``bf16_dot``: the host runs
    vdpbf16ps (``pairs.py``)."""
    cfg.check(vec)
    cfg.check_plan(kp)
    view = (DecodeView if cfg.decode else KernelView)(kp, cfg, static, vec, dtypes,
                                                       usable(bf16_dot, vec))
    return _template().render(k=view, cfg=view.cfg, lower=lower, VEC=vec, dot=dot)
