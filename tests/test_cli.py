"""The command line's contract: exit 0 ok, 1 only for a check that ran and mismatched, 2 for bad
input as one line ``einattn <cmd>: <ErrorType>: <message>`` (never a traceback), a closed stdout
pipe ends quietly; plus `list`'s descriptions, the defaults shown, the cited peak."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import einattn
from einattn.bench import flops
from einattn.cli import EXIT_BROKEN_PIPE, main
from einattn import inputs as common

ROOT = Path(__file__).resolve().parents[1]
TINY = "b=1,h=1,m=4,n=4,d=2,e=2"
CHECK = ["check", "softmax", "--target", "reference"]


def _bad_input(capsys, argv, *phrases, cmd="check", error="SpecError"):
    """``argv`` exits 2 with one line naming the command and the error type, and each phrase."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"einattn {cmd}: {error}: "), err
    for p in phrases:
        assert p in err, (p, err)
    return err


def _usage_error(capsys, argv, *phrases):
    """argparse's own error: SystemExit(2) and a usage line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    for p in phrases:
        assert p in err, (p, err)


# -- --shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, phrases", [
    ("b=-1", ("bad size of dim 'b'", "found b=-1", "positive integer below 2**31", "b=1")),
    ("b=0", ("bad size of dim 'b'", "found b=0")),
    ("b=2.5", ("bad size of dim 'b'", "found b=2.5", "whole numbers")),
    ("b=1e2", ("bad size of dim 'b'", "Fix: write b=100")),
    ("b=inf", ("bad size of dim 'b'", "found b=inf")),
    ("b=" + "1" + "0" * 30, ("bad size of dim 'b'", "(31 digits)", "at most b=2147483647")),
    ("b=2147483648", ("bad size of dim 'b'", "at most b=2147483647")),
    ("b=abc", ("bad --shape value", "expected a number", "found 'abc'")),
    ("b=", ("bad --shape item", "name=value")),
    ("b=1,b=2", ("--shape gives 'b' twice", "keep one 'b=...'")),
    ("b=1,z=3", ("--shape names 'z', which is not a dim of spec 'softmax'", "b, h, m, d, n, e")),
    ("bb=1", ("--shape names 'bb'", "did you mean 'b'?")),
    ("", ("--shape does not give every dim", "sizes for b")),
])
def test_bad_shape_is_exit_2(capsys, shape, phrases):
    full = ",".join([shape, "h=1,m=4,n=4,d=2,e=2"]) if shape else "h=1,m=4,n=4,d=2,e=2"
    _bad_input(capsys, CHECK + ["--shape", full], *phrases)


def test_missing_dims_are_named(capsys):
    _bad_input(capsys, CHECK + ["--shape", "b=100000,h=100000"], "sizes for m, d, n, e")


def test_shape_too_large_for_memory_is_refused_before_allocating(capsys):
    err = _bad_input(capsys, CHECK + ["--shape", "b=100000,h=100000,m=77,n=131,d=64,e=64"],
                     "needs more memory than is available", "GiB", "use smaller sizes")
    assert "float64 reference" in err


def test_memory_limit_counts_the_reference(capsys, monkeypatch):
    # 1 x 1 x 512 x 512 float64 scores are 2 MiB per statement: refused with 1 MiB available
    monkeypatch.setattr(common, "available_memory", lambda: 2 ** 20)
    _bad_input(capsys, CHECK + ["--shape", "b=1,h=1,m=512,n=512,d=2,e=2"], "needs more memory")
    monkeypatch.setattr(common, "available_memory", lambda: None)       # unknown: no refusal
    assert main(CHECK + ["--shape", TINY]) == 0


@pytest.mark.parametrize("argv", [
    ["compile", "causal", "--target", "cuda:sm_90", "--shape", "b=1,h=4,m=128,n=128,d=64,e=-64", "--out", "OUT"],
    ["compile", "causal", "--target", "cuda:sm_90", "--shape", "b=1,h=4,m=128,n=128,d=64,e=64,z=1", "--out", "OUT"],
    ["bench", "softmax", "--target", "streaming", "--shape", "b=1,b=1,h=1,m=8,n=8,d=2,e=2"],
    ["bench", "softmax", "--target", "streaming", "--shape", TINY, "--memory-shape", "b=1"],
])
def test_every_command_checks_its_shapes(capsys, tmp_path, argv):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    _bad_input(capsys, argv, "<command line>", cmd=argv[0])
    assert not (tmp_path / "out").exists()


# -- --param, --config, --tol, --seed, files, dtype, target ---------------------------------

@pytest.mark.parametrize("args, phrases", [
    (["--param", "scale=1", "--param", "scale=2"], ("--param gives 'scale' twice",)),
    (["--param", "scale=1,scale=2"], ("--param gives 'scale' twice",)),
    (["--param", "scale=abc"], ("bad --param value", "expected a number")),
    (["--param", "scale=nan"], ("--param scale is not finite",)),
    (["--param", "scale"], ("bad --param item",)),
    (["--param", "scal=1"], ("unknown param 'scal'", "scale")),
    (["--target", "streaming", "--config", "BLOCK_N=16,BLOCK_N=32"], ("--config gives 'BLOCK_N' twice",)),
])
def test_bad_param_and_config_are_exit_2(capsys, args, phrases):
    _bad_input(capsys, CHECK + ["--shape", TINY] + args, *phrases)


@pytest.mark.parametrize("args, error, phrases", [
    (["--target", "streaming", "--config", "BLOCK_N=abc"], "UnsupportedError", ("BLOCK_N",)),
    (["--target", "streaming", "--config", "BLOCK_N=-1"], "UnsupportedError", ("positive int",)),
    (["--target", "foo"], "UnsupportedError", ("unknown target 'foo'",)),
    (["--target", "cuda:sm_99"], "UnsupportedError", ("no hardware data",)),
])
def test_bad_config_and_target_are_exit_2(capsys, args, error, phrases):
    _bad_input(capsys, CHECK[:2] + ["--shape", TINY] + args, *phrases, error=error)


@pytest.mark.parametrize("args, phrases", [
    (["--tol", "nan"], ("--tol", "finite number >= 0")),
    (["--tol", "-1"], ("--tol",)),
    (["--seed", str(2 ** 70)], ("--seed", "[-2**63, 2**64)")),
    (["--dtype", "half"], ("--dtype", "invalid choice")),
])
def test_bad_option_values_are_usage_errors(capsys, args, phrases):
    _usage_error(capsys, CHECK + ["--shape", TINY] + args, *phrases)


@pytest.mark.parametrize("args, phrases", [
    (["--reps", "0"], ("--reps", "integer >= 1")),
    (["--warmup", "0"], ("--warmup",)),
    (["--threads", "-2"], ("--threads",)),
    (["--peak", "abc"], ("--peak", "'matmul'")),
    (["--peak", "0"], ("--peak",)),
])
def test_bad_bench_options_are_usage_errors(capsys, args, phrases):
    _usage_error(capsys, ["bench", "softmax", "--shape", TINY] + args, *phrases)


def test_nonexistent_spec_file_and_name(capsys, tmp_path):
    _bad_input(capsys, ["check", str(tmp_path / "nope.yaml"), "--shape", TINY], "cannot read spec file")
    _bad_input(capsys, ["explain", "nope"], "no spec named 'nope'", cmd="explain")


def test_unwritable_outputs_are_refused_before_work(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    _bad_input(capsys, ["compile", "softmax", "--target", "cuda:sm_90", "--shape", "b=1,h=1,m=16,n=16,d=16,e=16",
                        "--out", str(f)], "cannot write to --out", "it is a file", cmd="compile")
    _bad_input(capsys, ["bench", "softmax", "--target", "streaming", "--shape", TINY, "--json",
                        str(tmp_path / "no" / "dir" / "x.json")], "cannot write --json", cmd="bench")


# -- exit 1 means a mismatch, and only that --------------------------------------------------

def test_exit_1_is_a_mismatch(capsys):
    assert main(["check", "softmax", "--target", "streaming", "--shape", TINY, "--tol", "0"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and out.rstrip().endswith("FAIL")


def test_an_internal_error_is_exit_3_with_its_traceback(capsys, monkeypatch):
    def broken(spec):
        raise RuntimeError("boom")
    monkeypatch.setattr(einattn, "explain", broken)
    assert main(["explain", "softmax"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err and "internal error" in err


# -- a closed pipe (`einattn list | head -1`) ---------------------------------------------------

@pytest.mark.parametrize("argv, rc", [
    (["list"], EXIT_BROKEN_PIPE), (["explain", "softmax"], EXIT_BROKEN_PIPE),
    (CHECK + ["--shape", TINY], EXIT_BROKEN_PIPE),
    (["--help"], 0),                  # argparse drops a help text it cannot write, and exits 0
], ids=["list", "explain", "check", "help"])
def test_closed_stdout_pipe_ends_quietly(argv, rc):
    r, w = os.pipe()
    os.close(r)                       # the reader is gone before the first write: EPIPE every time
    try:
        p = subprocess.run([sys.executable, "-m", "einattn.cli", *argv], stdout=w, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT, timeout=300)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == rc, p.stderr


# -- list --------------------------------------------------------------------------------------

def _docs() -> dict[str, str]:
    return {n: " ".join(einattn.load_spec(n).doc.split()) for n in einattn.zoo_names()}


@pytest.mark.parametrize("columns", [60, 100, 200])
def test_list_shortens_descriptions_at_word_boundaries(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = _docs()
    assert [ln.split()[0] for ln in lines] == list(docs)
    for ln in lines:
        name, doc = ln.split()[0], ln.split(" pass  ", 1)[1]
        assert len(ln) <= max(columns, len(ln) - len(doc) + 40), ln
        if doc != docs[name]:
            assert doc.endswith(" ..."), ln
            kept = doc[:-4].split()
            assert kept == docs[name].split()[:len(kept)], ln         # whole words only


def test_list_full_prints_whole_descriptions(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["list", "--full"]) == 0
    out = capsys.readouterr().out
    for name, doc in _docs().items():
        assert f"pass  {doc}\n" in out, name


# -- defaults are shown ---------------------------------------------------------------------

@pytest.mark.parametrize("cmd, phrase", [("check", "default float32"), ("compile", "default float16"),
                                          ("bench", "default float32")])
def test_help_shows_the_dtype_default(capsys, cmd, phrase):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    assert phrase in " ".join(capsys.readouterr().out.split())


def test_check_output_says_the_dtype_is_the_default(capsys):
    assert main(CHECK + ["--shape", TINY]) == 0
    assert "softmax on reference, float32 (default --dtype), shape b=1,h=1," in capsys.readouterr().out
    assert main(CHECK + ["--shape", TINY, "--dtype", "float64"]) == 0
    assert "float64, shape" in capsys.readouterr().out


# -- bench's peak is cited inside the repository -------------------------------------------

def test_peak_cites_files_inside_the_repository():
    value, source = flops.resolve_peak(None)
    assert value == flops.PEAK_FP32_GFLOPS
    cited = re.findall(r"[\w./-]+\.md", source)
    assert cited and all((ROOT / c).is_file() for c in cited), cited
    for path in (ROOT / "einattn").rglob("*.py"):
        assert not re.search(r"shared/\w|STACK\.md", path.read_text()), path
    assert "--peak" in source          # and how to give this machine's own


def test_explain_kernel_at_a_shape_names_each_targets_program(capsys):
    from einattn.cli import main
    assert main(["explain", "gqa", "--kernel", "--shape", "b=1,h=32,g=8,m=1,n=8192,d=128,e=128"]) == 0
    out = capsys.readouterr().out
    assert "  cpu: program: decode" in out and "4 head(s) x 1 query row(s)" in out
    assert "  cuda: program: decode" in out and "'PROGRAM': 'decode', 'PACK': 4" in out
    assert main(["explain", "softmax", "--kernel", "--shape", "b=1,h=8,m=2048,n=2048,d=64,e=64"]) == 0
    assert "  cpu: program: tile" in capsys.readouterr().out
    assert main(["explain", "softmax", "--shape", "m=1"]) == 2
