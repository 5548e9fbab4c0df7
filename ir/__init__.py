"""einattn.ir: the einsum-cascade IR, its errors and settings (``settings.py``). Imports nothing else of einattn."""
from .errors import (BackendUnavailable, EinattnError, Loc, SpecError, TuningError,
                     UnsupportedError)
from .expr import BINARY, COMPARE, FUNCTIONS, LOGIC, UNARY_FN, Expr, Op, Sub, build_product, product_factors
from .cascade import SELECTIONS, BlockDecl, Cascade, ParamDecl, Reduce, Stmt, TensorDecl
from .verify import expr_type, verify
from .spec import parse_spec
from .bind import bind_blocks, bind_sizes, eval_params, eval_scalar

__all__ = ["BackendUnavailable", "EinattnError", "Loc", "SpecError", "TuningError", "UnsupportedError",
           "BINARY", "COMPARE", "FUNCTIONS", "LOGIC", "UNARY_FN", "Expr", "Op", "Sub", "build_product", "product_factors", "SELECTIONS", "BlockDecl", "Cascade", "ParamDecl",
           "Reduce", "Stmt", "TensorDecl", "expr_type", "verify", "parse_spec", "bind_blocks", "bind_sizes", "eval_params", "eval_scalar"]
