"""Malformed specs and calls: each raises einattn.SpecError naming file:line:column,
what was wrong and, where there is one, the fix.

Every case is a one-place edit of ``helpers.SOFTMAX`` (a valid spec), written to a
file so the message must carry the real path. ``line`` is the 1-based line the
error must name; ``at`` is the text the column must point at (its first
occurrence on that line), or None where the parser gives no useful column (YAML
and Python syntax errors point between tokens).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

import einattn
from tests.helpers import SOFTMAX

P_LINE = "  - P[b,h,m,n] = exp(S[b,h,m,n] - M[b,h,m])"
L_LINE = "  - L[b,h,m] = P[b,h,m,n]"


@dataclass(frozen=True)
class Case:
    id: str
    old: str                    # text of SOFTMAX to replace (must occur exactly once)
    new: str
    line: int
    at: str | None              # the column points at this text on `line`
    phrases: tuple[str, ...]    # each must occur in the message (case-insensitive)

    def text(self) -> str:
        assert SOFTMAX.count(self.old) == 1, self.id
        return SOFTMAX.replace(self.old, self.new)


def _p(expr: str) -> str:
    """The P statement (line 13) with a new right side."""
    return f"  - P[b,h,m,n] = {expr}"


CASES = [
    # -- expressions: the whitelist ------------------------------------------------
    Case("unknown_function", "exp(S", "expp(S", 13, "expp(",
         ("unknown function 'expp'", "did you mean 'exp'")),
    Case("undeclared_tensor", "V[b,h,n,e] /", "X[b,h,n,e] /", 15, "X[",
         ("unknown tensor 'x'", "declare 'x' under 'inputs:'")),
    Case("syntax_error", "K[b,h,n,d] * scale", "K[b,h,n,d] * * scale", 11, None,
         ("syntax error",)),
    Case("dunder_import", P_LINE, _p('__import__("os")'), 13, "__import__",
         ("unknown function '__import__'", "expected one of")),
    Case("os_system", P_LINE, _p('os.system("ls")'), 13, "os.system",
         ("only whitelisted functions can be called", "os.system")),
    Case("attribute_access", "Q[b,h,m,d] * K", "Q.__class__ * K", 11, "Q.__class__",
         ("attribute access is not allowed", ".__class__")),
    Case("lambda", P_LINE, '  - "P[b,h,m,n] = (lambda x: x)"', 13, None,
         ("unsupported syntax", "lambda")),
    Case("string_constant", "K[b,h,n,d] * scale", "K[b,h,n,d] * 'abc'", 11, "'abc'",
         ("unsupported constant", "expected a number", "'abc'")),
    Case("bool_constant", "K[b,h,n,d] * scale", "K[b,h,n,d] * True", 11, "True",
         ("unsupported constant", "expected a number")),
    Case("wrong_subscript_count", "K[b,h,n,d] * scale", "K[b,h,n] * scale", 11, "K[b,h,n]",
         ("'k' read with 3 subscripts", "expected 4")),
    Case("bad_subscript", "K[b,h,n,d] * scale", "K[b,h // 2,n,d] * scale", 11, "h // 2",
         ("bad subscript of 'k'", "'index // param'")),
    Case("tensor_without_subscripts", "K[b,h,n,d] * scale", "K[b,h,n,d] * V", 11, "V",
         ("tensor 'v' used without subscripts", "v[b, h, n, e]")),
    Case("function_as_value", "K[b,h,n,d] * scale", "K[b,h,n,d] * exp", 11, "exp",
         ("function 'exp' used as a value",)),
    Case("keyword_argument", P_LINE, _p("exp(x=S[b,h,m,n])"), 13, "exp(",
         ("takes no keyword arguments",)),
    Case("wrong_arity", P_LINE, _p("exp(S[b,h,m,n], M[b,h,m])"), 13, "exp(",
         ("'exp' takes 1 argument", "found 2")),
    Case("unknown_name", "K[b,h,n,d] * scale", "K[b,h,n,d] * scal", 11, "scal",
         ("unknown name 'scal'", "did you mean 'scale'")),
    Case("and_instead_of_amp", P_LINE, _p("where(n <= m and n > 0, exp(S[b,h,m,n] - M[b,h,m]), 0.0)"), 13,
         "n <= m and", ("'and' / 'or' are not supported", "&")),
    Case("or_instead_of_bar", P_LINE, _p("where(n <= m or n > 0, exp(S[b,h,m,n] - M[b,h,m]), 0.0)"), 13,
         "n <= m or", ("'and' / 'or' are not supported", "|")),
    Case("not_instead_of_tilde", P_LINE, _p("where(not n <= m, exp(S[b,h,m,n] - M[b,h,m]), 0.0)"), 13,
         "not n", ("unsupported unary operator", "~cond")),
    Case("unsupported_operator", "K[b,h,n,d] * scale", "K[b,h,n,d] @ scale", 11, "Q[",
         ("unsupported operator", "matmult")),
    Case("unsupported_comparison", P_LINE, _p("where(n in m, 1.0, 0.0)"), 13, "n in",
         ("unsupported comparison",)),
    # -- types: numbers vs booleans (the verifier names the statement) ----------------
    Case("amp_on_numbers_precedence", P_LINE, _p("where(n <= m & n > 0, exp(S[b,h,m,n] - M[b,h,m]), 0.0)"), 13,
         "P[", ("'&' needs a boolean", "parenthesise comparisons")),
    Case("where_numeric_condition", P_LINE, _p("where(n, exp(S[b,h,m,n] - M[b,h,m]), 0.0)"), 13, "P[",
         ("condition of where() needs a boolean",)),
    Case("stores_boolean", P_LINE, _p("n <= m"), 13, "P[",
         ("'p' stores a boolean", "where(cond, 1.0, 0.0)")),
    # -- statements -------------------------------------------------------------------
    Case("max_reduces_nothing", "  - M[b,h,m] max= S[b,h,m,n]\n",
         "  - M[b,h,m] max= S[b,h,m,n]\n  - Z[b,h,m] max= M[b,h,m]\n", 13, "Z[",
         ("'z' uses 'max=' but reduces nothing", "use '=' for an elementwise statement")),
    Case("min_reduces_nothing", "  - M[b,h,m] max= S[b,h,m,n]\n",
         "  - M[b,h,m] max= S[b,h,m,n]\n  - Z[b,h,m] min= M[b,h,m]\n", 13, "Z[",
         ("'z' uses 'min=' but reduces nothing",)),
    Case("unknown_left_index", L_LINE, "  - L[b,h,z] = P[b,h,m,n]", 14, "L[",
         ("unknown index 'z' on the left of 'l'",)),
    Case("repeated_left_index", L_LINE, "  - L[b,h,h] = P[b,h,m,n]", 14, "L[",
         ("left side of 'l' repeats an index", "distinct")),
    Case("assigned_twice", L_LINE, "  - P[b,h,m] = P[b,h,m,n]", 14, "P[",
         ("'p' is assigned twice", "new tensor name")),
    Case("assigns_an_input", L_LINE, "  - Q[b,h,m] = P[b,h,m,n]", 14, "Q[",
         ("'q' is assigned twice", "already an input")),
    Case("input_read_other_indices", "Q[b,h,m,d] * K[b,h,n,d]", "Q[b,h,m,d] * K[b,h,m,d]", 11, "S[",
         ("reads input 'k' with index 'm' where 'n' is declared", "k[b, h, n, d]")),
    Case("intermediate_read_other_indices", P_LINE, _p("exp(S[b,h,n,m] - M[b,h,m])"), 13, "P[",
         ("reads 's' with other indices", "s[b, h, m, n]")),
    Case("malformed_statement", L_LINE, "  - L[b,h,m] P[b,h,m,n]", 14, "L[",
         ("malformed statement", "t[i, j] = expr")),
    Case("statement_not_text", L_LINE, "  - 3", 14, "3",
         ("statement must be text",)),
    Case("reserved_tensor_name", L_LINE, "  - exp[b,h,m] = P[b,h,m,n]", 14, "exp[",
         ("tensor name 'exp' is reserved", "rename 'exp'")),
    # -- params -----------------------------------------------------------------------
    Case("param_cycle", "  scale: 1 / sqrt(d)\n", "  scale: 1 / a\n  a: scale * 2\n", 9, "scale",
         ("cycle", "scale -> a -> scale")),
    Case("param_reads_tensor", "scale: 1 / sqrt(d)", "scale: Q[b,h,m,d]", 9, "Q[",
         ("tensor reads are not allowed in params",)),
    Case("param_comparison", "scale: 1 / sqrt(d)", "scale: d < 2", 9, "d < 2",
         ("comparisons are not allowed in params",)),
    Case("param_unknown_dim", "scale: 1 / sqrt(d)", "scale: 1 / sqrt(dd)", 9, "dd",
         ("unknown name 'dd'",)),
    Case("param_logic", "scale: 1 / sqrt(d)", "scale: (d > 1) & (d < 2)", 9, "(d > 1)",
         ("'&' and '|' are not allowed in params",)),
    Case("param_name_is_yaml_boolean", "  scale: 1 / sqrt(d)\n", "  scale: 1 / sqrt(d)\n  off: n - m\n", 10, "off",
         ("bad param name", "boolean", 'quote the name')),
    Case("input_named_like_an_index", "  V: [b, h, n, e]\n", "  V: [b, h, n, e]\n  m: [m]\n", 8, "m:",
         ("input 'm' has the same name as an index",)),
    Case("param_clashes_with_index", "  scale: 1 / sqrt(d)\n", "  scale: 1 / sqrt(d)\n  m: 2\n", 10, "m:",
         ("param 'm' clashes",)),
    # -- the document -----------------------------------------------------------------
    Case("unknown_top_level_key", "cascade:", "cascde:", 10, "cascde",
         ("unknown key 'cascde'", "did you mean 'cascade'")),
    Case("missing_required_key", "outputs: [O]\n", "", 1, "einattn",
         ("missing required key 'outputs'",)),
    Case("wrong_format_version", "einattn: 1", "einattn: 2", 1, "2",
         ("unsupported spec format version", "einattn: 1", "found 2")),
    Case("output_never_defined", "outputs: [O]", "outputs: [Oo]", 16, "Oo",
         ("output 'oo' is never defined", "did you mean 'o'")),
    Case("output_is_an_input", "outputs: [O]", "outputs: [Q]", 16, "Q",
         ("output 'q' is never defined",)),
    Case("outputs_empty", "outputs: [O]", "outputs: []", 16, "[]",
         ("'outputs' is empty",)),
    Case("bad_yaml_indentation", "  K: [b, h, n, d]", "   K: [b, h, n, d]", 6, None,
         ("invalid yaml", "indentation")),
    Case("yaml_tab", "  K: [b, h, n, d]", "\tK: [b, h, n, d]", 6, None,
         ("invalid yaml", "'\\t'")),
    Case("duplicate_input_key", "  V: [b, h, n, e]\n", "  V: [b, h, n, e]\n  K: [b, h, n, e]\n", 8, "K",
         ("duplicate key 'k' in 'inputs'", "keep one")),
    Case("duplicate_top_level_key", "outputs: [O]\n", "outputs: [O]\nname: again\n", 17, "name",
         ("duplicate key 'name'",)),
    Case("input_not_a_list", "Q: [b, h, m, d]", "Q: bhmd", 5, "bhmd",
         ("input 'q' needs a list of index names", "q: [b, h, m, d]")),
    Case("input_repeats_index", "Q: [b, h, m, d]", "Q: [b, h, m, m]", 5, "Q",
         ("input 'q' repeats an index",)),
    Case("inputs_not_a_mapping", "inputs:\n  Q: [b, h, m, d]\n  K: [b, h, n, d]\n  V: [b, h, n, e]\n",
         "inputs: [Q, K, V]\n", 4, "[Q", ("'inputs' must be a mapping",)),
    Case("cascade_empty", SOFTMAX[SOFTMAX.index("cascade:"):SOFTMAX.index("outputs:")], "cascade: []\n", 10, "[]",
         ("'cascade' must be a non-empty list",)),
]


def _col(text: str, line: int, at: str) -> int:
    row = text.splitlines()[line - 1]
    assert at in row, f"{at!r} not on line {line}: {row!r}"
    return row.index(at) + 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_spec(case: Case, tmp_path):
    text = case.text()
    path = tmp_path / f"{case.id}.yaml"
    path.write_text(text)
    with pytest.raises(einattn.SpecError) as info:
        einattn.load_spec(path)
    msg = str(info.value)
    where = f"{path}:{case.line}:"
    assert msg.startswith(where), f"expected the location {where}..., got: {msg}"
    if case.at is not None:
        assert msg.startswith(f"{where}{_col(text, case.line, case.at)}:"), msg
    for phrase in case.phrases:
        assert phrase.lower() in msg.lower(), f"{phrase!r} not in: {msg}"
    # the same error, loaded from text, names <string>
    with pytest.raises(einattn.SpecError, match=re.escape(f"<string>:{case.line}:")):
        einattn.load_spec(text)


def test_cases_are_distinct_and_many():
    texts = [c.text() for c in CASES]
    assert len(set(texts)) == len(texts) >= 20


def test_error_hierarchy():
    assert issubclass(einattn.SpecError, einattn.EinattnError)
    assert issubclass(einattn.SpecError, ValueError)
    for cls in (einattn.UnsupportedError, einattn.BackendUnavailable, einattn.TuningError):
        assert issubclass(cls, einattn.EinattnError)
    with pytest.raises(ValueError):
        einattn.load_spec(SOFTMAX.replace("exp(S", "expp(S"))


def test_error_carries_structured_fields():
    with pytest.raises(einattn.SpecError) as info:
        einattn.load_spec(SOFTMAX.replace("exp(S", "expp(S"))
    e = info.value
    assert (e.loc.file, e.loc.line, e.loc.col) == ("<string>", 13, 18)
    assert e.found == "expp" and "exp" in e.expected and "did you mean 'exp'" in e.fix


def test_empty_and_non_mapping_specs():
    with pytest.raises(einattn.SpecError, match="empty spec"):
        einattn.load_spec("\n")
    with pytest.raises(einattn.SpecError, match="must be a mapping"):
        einattn.load_spec("- a\n- b\n")
    with pytest.raises(einattn.SpecError, match="cannot load a spec from this"):
        einattn.load_spec(3)


# -- errors at compile and call time ------------------------------------------------

def _softmax_file(tmp_path):
    path = tmp_path / "attn.yaml"
    path.write_text(SOFTMAX)
    return path


def test_unknown_param_in_compile(tmp_path):
    path = _softmax_file(tmp_path)
    with pytest.raises(einattn.SpecError) as info:
        einattn.compile(path, target="reference", scal=0.1)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "unknown param 'scal'" in msg and "scale" in msg


def test_inputs_disagree_on_a_dim(tmp_path):
    k = einattn.compile(_softmax_file(tmp_path), target="reference")
    q, kk, v = torch.randn(1, 2, 3, 4), torch.randn(1, 3, 5, 4), torch.randn(1, 2, 5, 6)
    with pytest.raises(einattn.SpecError) as info:
        k(q, kk, v)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'attn.yaml'}:6:")          # K's declaration
    assert "disagree on dim 'h'" in msg and "'Q'" in msg and "'K'" in msg
    assert "make 'Q' and 'K' agree on 'h'" in msg


def test_wrong_rank_at_call(tmp_path):
    k = einattn.compile(_softmax_file(tmp_path), target="reference")
    with pytest.raises(einattn.SpecError) as info:
        k(torch.randn(2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 6))
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'attn.yaml'}:5:")          # Q's declaration
    assert "input 'Q' has 3 dimensions" in msg and "expected 4 ([b, h, m, d])" in msg


@pytest.mark.parametrize("args, kwargs, phrase", [
    ((torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)), {}, "missing input 'V'"),
    ((torch.randn(1, 1, 2, 2),) * 4, {}, "takes 3 inputs"),
    ((torch.randn(1, 1, 2, 2),) * 3, {"Q": torch.randn(1, 1, 2, 2)}, "input 'Q' given twice"),
    ((torch.randn(1, 1, 2, 2),) * 3, {"W": torch.randn(1, 1, 2, 2)}, "unknown input 'W'"),
    ((torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.int32)), {},
     "input 'V' must be a floating-point torch.Tensor"),
    ((torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), [[1.0]]), {}, "found list"),
])
def test_bad_call_arguments(args, kwargs, phrase):
    k = einattn.compile("softmax", target="reference")
    with pytest.raises(einattn.SpecError, match=re.escape(phrase)) as info:
        k(*args, **kwargs)
    assert str(info.value).startswith("examples/softmax.yaml")


def test_gqa_read_past_the_end():
    k = einattn.compile("gqa", target="reference")
    q, kv = torch.randn(1, 4, 3, 4), torch.randn(1, 3, 5, 4)     # h=4 is not a multiple of g=3
    with pytest.raises(einattn.SpecError) as info:
        k(q, kv, kv)
    msg = str(info.value)
    assert msg.startswith("examples/gqa.yaml:12:5:")
    assert "reads past the end of dim 'g'" in msg and "make h a multiple of g" in msg


@pytest.mark.parametrize("r, found", [(0.5, "0.5"), (0, "0")])
def test_gqa_group_param_must_be_positive_integer(r, found):
    k = einattn.compile("gqa", target="reference", r=r)
    with pytest.raises(einattn.SpecError, match="must be a positive integer") as info:
        k(torch.randn(1, 4, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    assert f"found {found}" in str(info.value)


@pytest.mark.parametrize("expr, phrase", [
    ("1 / 0", "division by zero"),
    ("log(-1)", "math domain error"),
    ("10.0 ** 400", "out of range"),
    ("exp(1000)", "range error"),
    ("(-8) ** 0.5", "complex"),
])
def test_param_that_cannot_be_evaluated(expr, phrase):
    k = einattn.compile(SOFTMAX.replace("1 / sqrt(d)", expr), target="reference")
    with pytest.raises(einattn.SpecError, match=re.escape(phrase)) as info:
        k(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2))
    assert str(info.value).startswith("<string>:9:3: param 'scale' cannot be evaluated")


def test_param_override_must_be_a_number():
    k = einattn.compile("softmax", target="reference", scale="big")
    with pytest.raises(einattn.SpecError, match="override of param 'scale' must be a number"):
        k(torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2))


# -- bugs found while writing these tests (fixed; kept as regressions) -----

def _spec_error(text):
    """Load text; return the SpecError (fail on success or on any other exception)."""
    with pytest.raises(einattn.SpecError) as info:
        einattn.load_spec(text)
    return info.value


def test_yaml_tag_is_a_spec_error():
    e = _spec_error(SOFTMAX.replace("name: softmax", "name: !foo softmax"))
    assert str(e).startswith("<string>:2:")


def test_yaml_merge_key_is_a_spec_error():
    e = _spec_error(SOFTMAX.replace("  Q: [b, h, m, d]", "  <<: {Z: [b]}\n  Q: [b, h, m, d]"))
    assert str(e).startswith("<string>:5:")


def test_huge_integer_literal_is_a_spec_error():
    e = _spec_error(SOFTMAX.replace("* scale", "* 1" + "0" * 400))
    assert str(e).startswith("<string>:11:")


def test_boolean_format_version_is_rejected():
    e = _spec_error(SOFTMAX.replace("einattn: 1", "einattn: true"))
    assert "unsupported spec format version" in str(e)


def test_column_in_quoted_statement():
    text = SOFTMAX.replace(P_LINE, '  - "P[b,h,m,n] = expp(S[b,h,m,n] - M[b,h,m])"')
    e = _spec_error(text)
    assert str(e).startswith(f"<string>:13:{_col(text, 13, 'expp')}:")


def test_location_in_multiline_statement():
    text = SOFTMAX.replace(P_LINE, "  - P[b,h,m,n] = exp(S[b,h,m,n]\n    - M[b,h,m]) + expp(1.0)")
    e = _spec_error(text)
    assert str(e).startswith(f"<string>:14:{_col(text, 14, 'expp')}:")


def test_long_one_line_text_is_a_spec_error():
    e = _spec_error("1" * 321)
    assert "no spec named" in str(e)


def test_empty_string_says_empty():
    e = _spec_error("")
    assert "empty" in str(e) and "directory" not in str(e)


def test_starred_argument_message():
    e = _spec_error(SOFTMAX.replace(P_LINE, _p("exp(*S[b,h,m,n])")))
    assert "expected 1; found 1" not in str(e)
