"""The CPU template without TVM: every zoo kernel renders to valid Python syntax, the
template documents its constants, and the expression hook keeps the masked-row rules."""
from __future__ import annotations

import ast
import dataclasses
import re

import pytest

from einattn import explain
from einattn.backends.cpu.config import CpuConfig
from einattn.backends.cpu.render import render, template_source
from einattn.backends.cpu.expr import Ctx, inf_flags, lower
from einattn.compiler import make_kernel_plan
from einattn.ir import Expr, Op, Sub
from tests.helpers import ZOO_NAMES


def _source(name: str, cfg: CpuConfig = CpuConfig()) -> str:
    kp = make_kernel_plan(explain(name))
    return render(kp, cfg, {i: {"d": 16, "e": 32}.get(i, 8) for i in kp.static}, 16)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_every_zoo_kernel_renders_to_python_syntax(name):
    src = _source(name)
    ast.parse(src)                                   # TVMScript is Python syntax
    assert src.count("T.parallel(") == 1             # one parallel loop over (grid, query tile)
    for loop in re.findall(r"for kt in range.*?# ----", src, re.S):
        assert not re.search(r"T\.(exp|exp2|log|tanh|sigmoid)\(", loop), "scalar libm call in a key loop"


def test_template_documents_every_constant():
    head = template_source().split("-#}")[0]
    for f in dataclasses.fields(CpuConfig):
        assert re.search(rf"\b{f.name}\b", head), f"{f.name} is not documented in the template header"
    assert "VEC" in head


def test_multi_pass_recomputes_scores_and_keeps_row_state():
    src = _source("centered_relu")
    assert src.count("# ---- pass") == 2
    assert src.count("= T.alloc_buffer((64, 64)") == 2  # the S and P tiles only: no [M, N] buffer


def test_causal_skips_empty_tiles_and_has_a_predicate_free_body():
    src = _source("causal")
    assert "if T.Not(" in src                        # empty key tiles are skipped
    fast = src.split("if T.And(T.And(mv == 64, nv == 64)")[1].split("else:", 1)[0]
    # no predicate (the index compares of the mask) and the masked copy is an alias; the
    # T.Selects left are the NaN-keeping exp2 clamps and the masked-row rule of S - M
    assert '<= T.Cast("float32"' not in fast and "t_Sm" not in fast
    assert '<= T.Cast("float32"' in src.split("if T.And(T.And(mv == 64, nv == 64)")[1]   # the general body


def _ctx(**kw) -> Ctx:
    base = dict(coords={"m": "m0 + li", "n": "n0 + lj"}, local={"m": "li", "__query": "li", "__key": "lj"},
                lane="li", lanes=64, fast=True, tiles=frozenset({"S"}), rows={"M": ("m",)})
    return Ctx(**{**base, **kw})


def test_sub_rule_only_where_both_sides_may_be_minus_inf():
    s = Expr.read("S", (Sub("m"), Sub("n")))
    m = Expr.read("M", (Sub("m"),))
    e = Expr(Op.SUB, (s, m))
    assert "T.Select" not in lower(e, _ctx()).value
    both = lower(e, _ctx(flags={"S": (True, False), "M": (True, False)}))
    assert "T.Select" in both.value and "infinity" in both.value
    assert inf_flags(Expr(Op.EXP, (e,)), {"S": (True, False)}) == (False, False)


def test_fast_exp_is_a_polynomial_and_stages_its_argument():
    s = Expr.read("S", (Sub("m"), Sub("n")))
    low = lower(Expr(Op.EXP, (s,)), _ctx())
    assert "T.exp" not in low.value and "T.reinterpret" in low.value
    assert all(line.startswith(tuple(n for n, _ in low.scratch)) for line in low.lines)
    assert "T.exp(" in lower(Expr(Op.EXP, (s,)), _ctx(fast=False)).value
