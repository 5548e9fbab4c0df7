"""The IR: structural hash, canonical JSON, dependency graph, expression rendering."""
from __future__ import annotations

import json
import re

import networkx as nx
import pytest

import einattn
from einattn.ir import Expr, Op, Reduce, Stmt, Sub, parse_spec, verify
from tests.helpers import SOFTMAX, ZOO_NAMES

HASH = parse_spec(SOFTMAX).structural_hash()

# Edits of SOFTMAX that must keep the structural hash.
SAME = {
    "whitespace_in_statements": [
        ("S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale", "S[ b , h , m , n ]=Q[b, h, m, d]*K[b,h,n,d]  *  scale"),
        ("M[b,h,m] max= S[b,h,m,n]", "M[b,h,m]   max=   S[b,h,m,n]   "),
    ],
    "redundant_parentheses": [("exp(S[b,h,m,n] - M[b,h,m])", "exp(((S[b,h,m,n]) - (M[b,h,m])))"),
                              ("Q[b,h,m,d] * K[b,h,n,d] * scale", "(Q[b,h,m,d] * K[b,h,n,d]) * scale")],
    "quoted_statements": [("- L[b,h,m] = P[b,h,m,n]", "- 'L[b,h,m] = P[b,h,m,n]'"),
                          ("- O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]",
                           '- "O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]"')],
    "block_style_lists": [("  Q: [b, h, m, d]\n", "  Q:\n    - b\n    - h\n    - m\n    - d\n"),
                          ("outputs: [O]", "outputs:\n  - O")],
    "flow_style_mapping": [("inputs:\n  Q: [b, h, m, d]\n  K: [b, h, n, d]\n  V: [b, h, n, e]\n",
                            "inputs: {Q: [b,h,m,d], K: [b,h,n,d], V: [b,h,n,e]}\n")],
    "comments_and_blank_lines": [("cascade:\n", "\n# the cascade\ncascade:   # five statements\n\n"),
                                 ("einattn: 1\n", "# spec\neinattn: 1   # version\n")],
    "indentation_width": [("  - S[", "      - S["), ("  - M[", "      - M["), ("  - P[", "      - P["),
                          ("  - L[", "      - L["), ("  - O[", "      - O[")],
    "number_spelling": [("1 / sqrt(d)", "1.0/sqrt(d)")],
    "name_and_doc": [("name: softmax", "name: renamed"), ("doc: Scaled dot-product attention.", "doc: Other words.")],
    "no_doc": [("doc: Scaled dot-product attention.\n", "")],
    "reordered_top_level_keys": [
        ("inputs:\n  Q: [b, h, m, d]\n  K: [b, h, n, d]\n  V: [b, h, n, e]\n", ""),
        ("outputs: [O]\n", "outputs: [O]\ninputs:\n  Q: [b, h, m, d]\n  K: [b, h, n, d]\n  V: [b, h, n, e]\n"),
        ("einattn: 1\nname: softmax\n", "name: softmax\n"),
        ("outputs: [O]\n", "outputs: [O]\neinattn: 1\n"),
    ],
    "params_before_inputs": [("params:\n  scale: 1 / sqrt(d)\n", ""),
                             ("inputs:\n", "params:\n  scale: 1 / sqrt(d)\ninputs:\n")],
    "crlf_line_endings": [("\n", "\r\n")],
}

# Edits that must change it.
DIFFERENT = {
    "param_value": [("1 / sqrt(d)", "2 / sqrt(d)")],
    "param_expression": [("1 / sqrt(d)", "rsqrt(d)")],
    "param_name": [("scale: 1 / sqrt(d)", "tau: 1 / sqrt(d)"), ("* scale", "* tau")],
    "operator": [("exp(S[b,h,m,n] - M[b,h,m])", "exp(S[b,h,m,n] + M[b,h,m])")],
    "function": [("exp(S[b,h,m,n] - M[b,h,m])", "exp2(S[b,h,m,n] - M[b,h,m])")],
    "reduction": [("M[b,h,m] max= S[b,h,m,n]", "M[b,h,m] min= S[b,h,m,n]")],
    "operand_order": [("Q[b,h,m,d] * K[b,h,n,d] * scale", "K[b,h,n,d] * Q[b,h,m,d] * scale")],
    "extra_statement": [("outputs: [O]", "outputs: [O]"),
                        ("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]\n",
                         "  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]\n  - Z[b,h,m] = L[b,h,m]\n")],
    "extra_output": [("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]\n",
                      "  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]\n  - Z[b,h,m] = L[b,h,m]\n"),
                     ("outputs: [O]", "outputs: [O, Z]")],
    "tensor_renamed": [("L[b,h,m]", "Den[b,h,m]")],
    "index_renamed": [("V: [b, h, n, e]", "V: [b, h, n, f]"), ("O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e]",
                                                             "O[b,h,m,f] = P[b,h,m,n] * V[b,h,n,f]")],
    "input_order": [("  Q: [b, h, m, d]\n  K: [b, h, n, d]\n", "  K: [b, h, n, d]\n  Q: [b, h, m, d]\n")],
    "key_index": [("outputs: [O]", "outputs: [O]\nkey_index: m")],
}


def _edit(edits) -> str:
    text = SOFTMAX
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("edit", list(SAME))
def test_hash_stable_under_formatting(edit):
    c = parse_spec(_edit(SAME[edit]))
    assert c.structural_hash() == HASH
    assert c == parse_spec(SOFTMAX)


@pytest.mark.parametrize("edit", list(DIFFERENT))
def test_hash_changes_with_the_cascade(edit):
    text = _edit(DIFFERENT[edit])
    assert text != SOFTMAX
    assert parse_spec(text).structural_hash() != HASH


def test_zoo_hashes_are_distinct():
    hashes = {einattn.load_spec(n).structural_hash() for n in ZOO_NAMES}
    assert len(hashes) == len(ZOO_NAMES)


def test_hash_is_short_hex_and_independent_of_file():
    c = parse_spec(SOFTMAX, "a.yaml")
    h = c.structural_hash()
    assert len(h) == 16 and int(h, 16) >= 0
    assert parse_spec(SOFTMAX, "elsewhere/b.yaml").structural_hash() == h


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_canonical_is_sorted_json(name):
    c = einattn.load_spec(name)
    text = c.canonical()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert data == c.to_json()
    assert "doc" not in data and c.name not in (data.get("name"),)
    assert set(data) == {"einattn", "key", "inputs", "params", "cascade", "outputs"}
    assert [s["name"] for s in data["cascade"]] == [s.name for s in c.stmts]


def test_canonical_spells_infinities():
    data = json.loads(einattn.load_spec("causal").canonical())
    assert '"-inf"' in json.dumps(data)     # where(.., -inf): JSON has no infinity literal


def test_nan_constant_hash_differs_from_minus_inf():
    a = parse_spec(SOFTMAX.replace("1 / sqrt(d)", ".nan"))
    b = parse_spec(SOFTMAX.replace("1 / sqrt(d)", "-.inf"))
    assert a.structural_hash() != b.structural_hash()


def test_softmax_dependency_graph():
    c = parse_spec(SOFTMAX)
    g = c.dependency_graph()
    assert isinstance(g, nx.DiGraph) and nx.is_directed_acyclic_graph(g)
    assert set(g.edges) == {("Q", "S"), ("K", "S"), ("S", "M"), ("S", "P"), ("M", "P"), ("P", "L"),
                            ("P", "O"), ("V", "O"), ("L", "O")}
    assert {n: g.nodes[n]["kind"] for n in g} == {"Q": "input", "K": "input", "V": "input", "S": "stmt",
                                                  "M": "stmt", "P": "stmt", "L": "stmt", "O": "stmt"}
    assert g.nodes["M"]["stmt"] == c.stmt("M")
    assert list(nx.topological_sort(g.subgraph(["S", "M", "P", "L", "O"]))) == ["S", "M", "P", "L", "O"]


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_dependency_graph_covers_every_read(name):
    c = einattn.load_spec(name)
    g = c.dependency_graph()
    assert nx.is_directed_acyclic_graph(g)
    assert set(g) == {t.name for t in c.inputs} | {s.name for s in c.stmts}
    assert {(r, s.name) for s in c.stmts for r in s.expr.reads()} == set(g.edges)


def _spec_text_from(c) -> str:
    """Spec text rebuilt from the IR's own rendering (Stmt.__str__, Expr.__str__)."""
    lines = ["einattn: 1", f"name: {c.name}", "inputs:"]
    lines += [f"  {t.name}: [{', '.join(t.indices)}]" for t in c.inputs]
    if c.params:
        lines.append("params:")
        lines += [f"  {json.dumps(p.name)}: {json.dumps(str(p.expr))}" for p in c.params]
    lines.append("cascade:")
    lines += [f"  - {json.dumps(str(s))}" for s in c.stmts]
    lines.append(f"outputs: [{', '.join(c.outputs)}]")
    if c.key != "n":
        lines.append(f"key_index: {c.key}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_render_round_trips(name):
    c = einattn.load_spec(name)
    back = parse_spec(_spec_text_from(c))
    assert back.stmts == c.stmts
    for s, t in zip(back.stmts, c.stmts):
        assert s.expr == t.expr and str(s) == str(t)
    assert back.params == c.params
    assert back.structural_hash() == c.structural_hash()


EXPRESSIONS = [
    "(n <= m) & (n > m - W)", "(n <= m) | (n < P)", "~(n <= m) & (n >= 0)", "~((n <= m) | (n < P))",
    "-x ** 2", "(-x) ** 2", "x ** -2", "x ** (y ** 2)", "(x ** y) ** 2", "2 ** -x", "x - (y - 1)",
    "x / (y * 2)", "(x // 2) % 3", "x % (y // 2)", "-(x + y)", "-(-x)", "-inf", "x * -inf", "x - -1",
    "where(x < y, -x, x) - min(x, max(y, 1.5e-07))", "1e+300 * x", "exp2(x - y) * rsqrt(y + 1) / (1 + x)",
    "x < y < 2", "x == y", "(x != y) & (y <= 2)", "(n <= m) | ~(n < P) & (x > 0)",
]


def _is_bool(text: str) -> bool:
    return not text.startswith("where") and any(op in text for op in ("<", ">", "==", "!="))


def _spec_with(text: str) -> str:
    """A spec whose last statement is ``text`` over reads x, y, indices m, n and params W, P."""
    expr = re.sub(r"\bx\b", "x[m,n]", re.sub(r"\by\b", "y[m,n]", text))
    if _is_bool(text):
        expr = f"where({expr}, 1.0, 0.0)"
    return ("einattn: 1\nname: e\ninputs:\n  X: [m, n]\nparams:\n  W: 3\n  P: 2\ncascade:\n"
            "  - x[m,n] = X[m,n]\n  - y[m,n] = X[m,n] * 2\n"
            f"  - {json.dumps('z[m,n] = ' + expr)}\noutputs: [z]\n")


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_expression_render_round_trips(text):
    c = parse_spec(_spec_with(text))
    back = parse_spec(_spec_text_from(c))
    assert back.stmts == c.stmts, (str(c.stmts[-1]), str(back.stmts[-1]))


def test_stmt_str_and_reduced_indices():
    c = parse_spec(SOFTMAX)
    s = c.stmt("O")
    assert str(s) == "O[b,h,m,e] = P[b, h, m, n] * V[b, h, n, e] / L[b, h, m]"
    assert s.reduced == ("n",) and s.all_indices == ("b", "h", "m", "e", "n")
    assert c.stmt("M").reduce is Reduce.MAX and c.stmt("S").reduced == ("d",)
    assert c.index_names == ("b", "h", "m", "d", "n", "e")


def test_ir_nodes_are_frozen_with_structural_equality():
    a = Expr(Op.ADD, (Expr.const(1), Expr.read("X", (Sub("m"),))))
    b = Expr(Op.ADD, (Expr.const(1.0), Expr.read("X", (Sub("m"),))))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.op = Op.SUB
    s1 = Stmt("Y", ("m",), Reduce.SUM, a, loc=None)
    s2 = Stmt("Y", ("m",), Reduce.SUM, b, loc=einattn.ir.Loc("f.yaml", 3, 5))
    assert s1 == s2                                    # locations do not count


def test_verifier_accepts_every_zoo_spec_and_its_rewrites():
    for name in ZOO_NAMES:
        plan = einattn.explain(name)
        verify(plan.original)
        for _, stage in plan.stages:
            verify(stage)
