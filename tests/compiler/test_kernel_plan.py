"""The kernel plan as the contract between the compiler and the backends: typed ops, index
roles, the capability check both backends call, the lowering rules, ``explain --kernel``."""
from __future__ import annotations

import pytest

import einattn
from einattn.cli import main
from einattn.compiler import (Capabilities, Kind, MapOp, RowOp, RowReduceOp, ScoreOp, ValueOp, alias_copies,
                              check_capabilities, fuse_row_reductions, hoist_key_free_reads, make_kernel_plan,
                              make_plan, stage_dense_reads)
from einattn.ir import UnsupportedError
from tests.helpers import SOFTMAX
from tests.test_kernel_refusals import COSINE, OUT_DOT_Q, OUT_NORM

TWO_VALUES = (SOFTMAX.replace("  V: [b, h, n, e]\n", "  V: [b, h, n, e]\n  W: [b, h, n, f]\n")
              .replace("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]\n",
                       "  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]\n"
                       "  - O2[b,h,m,f] = P[b,h,m,n] * W[b,h,n,f] / L[b,h,m]\n")
              .replace("outputs: [O]", "outputs: [O, O2]"))


def _kp(spec):
    c = einattn.load_spec(spec)
    if c.selects:               # block-sparse (spec v1.1): the kernel runs the attention stage
        from einattn.compiler.selection import split
        c = split(c).attend
    return make_kernel_plan(make_plan(c))


def _caps(target: str) -> Capabilities:
    from einattn.backends import get_backend, parse_target
    return get_backend(parse_target(target)).capabilities


def test_softmax_ops_are_typed_with_named_fields():
    kp = _kp("softmax")
    assert dict(kp.roles) == {"b": "grid", "h": "grid", "m": "query", "n": "key", "d": "contract", "e": "value"}
    assert kp.static == ("d", "e") and kp.rows == {"M", "L", "O_u", "O"}
    (p,) = kp.passes
    assert [type(op) for op in p.loop] == [ScoreOp, RowReduceOp, MapOp, RowReduceOp, ValueOp]
    s, v = p.loop[0], p.loop[-1]
    assert (str(s.query_read), str(s.key_read), s.contract, str(s.scalars)) == \
        ("Q[b, h, m, d]", "K[b, h, n, d]", "d", "scale")
    assert (str(v.weights), str(v.value_read), v.value_index) == ("P[b, h, m, n]", "V[b, h, n, e]", "e")
    assert [op.kind for op in p.state] == [Kind.ROW_REDUCE, Kind.ROW_REDUCE, Kind.VALUE]
    assert p.tiles == ("S", "P") and p.stabilisers == ("M",)
    assert [type(op) for op in p.epilogue] == [RowOp] and kp.outputs == (("O", ("b", "h", "m", "e")),)
    with pytest.raises(AttributeError):
        s.name = "T"                                     # frozen


# feature maps computed by statements (phi(Q) . phi(K)): the quadratic kernels refuse them, the
# linear scan runs them (tests/backends/test_linear.py)
SCAN_ONLY = {"linear_elu": "query-side operand Fq", "efficient": "must produce per-row values"}


@pytest.mark.parametrize("target", ["cpu", "cuda", "rocm"])
@pytest.mark.parametrize("name", einattn.zoo_names())
def test_every_zoo_variant_passes_every_kernel_backend(name, target):
    if name in SCAN_ONLY:
        with pytest.raises(UnsupportedError, match=SCAN_ONLY[name]):
            check_capabilities(_kp(name), _caps(target), target)
        return
    check_capabilities(_kp(name), _caps(target), target)


def test_a_statistic_of_inputs_is_computed_before_the_kernel():
    kp = _kp(COSINE)
    assert [s.name for s in kp.pre] == ["Qn"] and "Qn" in {t.name for t in kp.cascade.inputs}
    assert not kp.prologue and "before the kernel" in kp.describe()


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_statistic_after_the_key_loop_is_checked_against_the_capabilities(target):
    kp = _kp(OUT_NORM)
    (z,) = [op for op in kp.passes[-1].epilogue if op.name == "Z"]
    assert z.reduced == ("e",)
    check_capabilities(kp, _caps(target), target)       # one value index into a value per row
    with pytest.raises(UnsupportedError, match=r"<string>:\d+:\d+: per-row statement 'Z.*toy backend"
                                               r".*sums over e a value the kernel computes"):
        check_capabilities(kp, Capabilities(row_reductions=False), "toy")
    with pytest.raises(UnsupportedError, match=rf"<string>:\d+:\d+: per-row statement 'Z.*{target} backend"
                                               r".*reduces over e, d"):
        check_capabilities(_kp(OUT_DOT_Q), _caps(target), target)


def test_a_second_value_width_is_refused_where_one_is_allowed():
    kp = _kp(TWO_VALUES)
    assert kp.value == ("e", "f")
    with pytest.raises(UnsupportedError, match=r"<string>:\d+:\d+: value contraction 'O2.*toy backend.*'f'"):
        check_capabilities(kp, Capabilities(max_value_indices=1), "toy")


@pytest.mark.cpu
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_outputs_of_value_tensors_of_different_widths(target):
    import torch
    g = torch.Generator().manual_seed(0)
    x = {"Q": torch.randn(1, 2, 37, 16, generator=g), "K": torch.randn(1, 2, 45, 16, generator=g),
         "V": torch.randn(1, 2, 45, 8, generator=g), "W": torch.randn(1, 2, 45, 32, generator=g)}
    want = einattn.compile(TWO_VALUES, target="reference")(**{k: v.double() for k, v in x.items()})
    kw = {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}} if target == "cuda" else {}
    got = einattn.compile(TWO_VALUES, target=target, **kw)(**x)
    for o, w in zip(got, want):
        torch.testing.assert_close(o.double(), w, rtol=1e-4, atol=1e-5)


def test_outputs_must_be_per_row():
    kp = _kp("lse")
    with pytest.raises(UnsupportedError, match=r"output 'O\[b,h,m,e\].*carries b, h, e \(grid, grid, value\)"):
        check_capabilities(kp, Capabilities(output_roles=frozenset({"query"})), "toy")


@pytest.mark.parametrize("name, full, alias, fused", [
    ("softmax", True, {}, {"L": "P"}),
    ("causal", True, {"Sm": "S"}, {"L": "P"}),           # the mask is true on a full tile: Sm is S
    ("causal", False, {}, {"M": "Sm", "L": "P"}),
    ("bias", False, {}, {"M": "T", "L": "P"}),
])
def test_alias_and_fusion_rules(name, full, alias, fused):
    kp = _kp(name)
    (p,) = kp.passes
    assert alias_copies(kp, p, full) == alias
    assert fuse_row_reductions(kp, p, full) == fused


def test_staging_and_hoisting_rules():
    kp = _kp("bias")
    assert [str(e) for e in stage_dense_reads(kp, kp.passes[0])] == ["B[h, m, n]"]
    assert hoist_key_free_reads(kp, kp.passes[0]) == ()
    kp = _kp("sinks")
    assert [str(e) for e in hoist_key_free_reads(kp, kp.passes[0])] == ["t[h]"]
    assert stage_dense_reads(kp, kp.passes[0]) == ()


def test_explain_kernel_prints_roles_ops_rules_and_targets(capsys, tmp_path):
    assert main(["explain", "causal", "--kernel"]) == 0
    out = capsys.readouterr().out
    for phrase in ("roles: b=grid, h=grid, m=query, n=key, d=contract, e=value", "ScoreOp S[b,h,m,n]",
                   "ValueOp O_u[b,h,m,e]", "alias_copies (full tiles): Sm reads tile S",
                   "fuse_row_reductions", "cpu: yes", "cuda: yes", "rocm: yes"):
        assert phrase in out, (phrase, out)
    f = tmp_path / "norm.yaml"
    f.write_text(OUT_DOT_Q)
    assert main(["explain", str(f), "--kernel"]) == 0
    out = capsys.readouterr().out
    assert "RowOp Z[b,h,m] = sum_e,d" in out
    for t in ("cpu", "cuda", "rocm"):
        assert f"  {t}: no: {f}:" in out and f"by the {t} backend: it reduces over e, d" in out, out
    f.write_text(COSINE)
    assert main(["explain", str(f), "--kernel"]) == 0
    out = capsys.readouterr().out
    assert "before the kernel" in out and "Qn[b,h,m] = Q[b, h, m, d] * Q[b, h, m, d]" in out and "cpu: yes" in out
