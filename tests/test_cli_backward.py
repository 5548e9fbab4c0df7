"""`einattn explain --backward` and `einattn check --backward`."""
from __future__ import annotations

import pytest

from einattn.cli import main
from tests.test_cli import _bad_input

pytestmark = pytest.mark.cpu
SHAPE = "b=1,h=2,m=19,n=33,d=8,e=8"


def test_explain_backward_shows_cut_saved_and_stages(capsys):
    assert main(["explain", "centered_relu", "--backward"]) == 0
    out = capsys.readouterr().out
    assert "stop-gradient (shift-invariant stabilisers): (none)" in out
    assert "saved by the forward: Mu, L, O" in out
    assert "dq: kernel streaming 'n', 2 pass(es)" in out
    assert "dkv: kernel streaming 'm', 1 pass(es)" in out
    assert main(["explain", "softmax", "--backward", "--wrt", "V"]) == 0
    out = capsys.readouterr().out
    assert "with respect to V" in out and "dq:" not in out


def test_check_backward_passes_and_names_gradients(capsys):
    assert main(["check", "alibi", "--backward", "--target", "streaming", "--shape", SHAPE]) == 0
    out = capsys.readouterr().out
    assert "alibi backward on streaming" in out and "dslope[2]" in out and out.rstrip().endswith("PASS")


def test_check_backward_on_the_reference_checks_the_derived_cascade(capsys):
    assert main(["check", "differential", "--backward", "--target", "reference", "--dtype", "float64",
                 "--shape", "b=1,h=2,m=19,n=33,d=8,e=8"]) == 0
    out = capsys.readouterr().out
    assert "dlam[2]" in out and "(tol 1e-10)" in out and out.rstrip().endswith("PASS")


def test_check_backward_mismatch_exits_1(capsys):
    # a tolerance below float32's rounding makes the same comparison fail
    assert main(["check", "softmax", "--backward", "--target", "streaming", "--shape", SHAPE,
                 "--tol", "1e-12"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("FAIL")


def test_bad_backward_arguments(capsys):
    _bad_input(capsys, ["check", "softmax", "--backward", "--wrt", "X", "--target", "streaming",
                        "--shape", SHAPE], "'X' is not an input", "Q, K, V")
    _bad_input(capsys, ["check", "softmax", "--wrt", "Q", "--target", "streaming", "--shape", SHAPE],
               "use it with --backward", error="UnsupportedError")
    _bad_input(capsys, ["explain", "softmax", "--backward", "--wrt", "X"], "'X': not an input", cmd="explain")
    _bad_input(capsys, ["explain", "softmax", "--wrt", "Q"], "use it with --backward", cmd="explain",
               error="UnsupportedError")
