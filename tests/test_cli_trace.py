"""``einattn trace MODULE:FUNCTION --shape ...``: prints the derived spec (valid input to
load_spec) and its passes; bad references, shapes and unsupported functions exit 2 in one line."""
from __future__ import annotations

from pathlib import Path

import einattn
from einattn.cli import main

ZOO = str(Path(__file__).resolve().parent / "trace_zoo.py")
QKV = "q=2x4x37x16,k=2x4x53x16,v=2x4x53x8"


def _one_line_error(capsys, argv, *phrases, error="SpecError"):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (rc, err)
    assert err.startswith(f"einattn trace: {error}: "), err
    for p in phrases:
        assert p in err, err


def test_trace_prints_a_loadable_spec(capsys):
    assert main(["trace", f"{ZOO}:sinks", "--shape", QKV, "--shape", "t=4"]) == 0
    out = capsys.readouterr().out
    spec = einattn.load_spec(out)
    assert [t.name for t in spec.inputs] == ["q", "k", "v", "t"]
    assert "# 3 pass(es) over 'n' as written, 1 planned" in out


def test_trace_takes_module_names_and_arguments(capsys):
    assert main(["trace", "tests.trace_zoo:sliding_window", "--shape", QKV, "--arg", "window=8"]) == 0
    assert "m - 8" in capsys.readouterr().out


def test_trace_errors_are_one_line(capsys):
    _one_line_error(capsys, ["trace", f"{ZOO}:sinks", "--shape", QKV], "no shape for argument(s) t")
    _one_line_error(capsys, ["trace", f"{ZOO}:nothing", "--shape", QKV], "has no 'nothing'")
    _one_line_error(capsys, ["trace", f"{ZOO}:softmax", "--shape", "q=2xx"], "bad --shape item")
    _one_line_error(capsys, ["trace", f"{ZOO}:softmax", "--shape", QKV + ",w=3"], "names no argument")
    _one_line_error(capsys, ["trace", "tests/trace/test_unsupported.py:cumsum", "--shape", QKV],
                    "test_unsupported.py:", "cumsum", error="UnsupportedError")


def test_a_module_that_fails_to_import_is_bad_input(capsys, tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\nraise RuntimeError('boom')\ndef f(q, k, v):\n    return q\n")
    _one_line_error(capsys, ["trace", f"{bad}:f", "--shape", QKV], "cannot import", "boom")


def test_more_bad_input_is_one_line(capsys):
    _one_line_error(capsys, ["trace", "tests.trace_zoo:PLAIN", "--shape", QKV], "not a function")
    _one_line_error(capsys, ["trace", f"{ZOO}:softmax", "--shape", "q=-3x8,k=5x8,v=5x8"], "sizes >= 1")
    _one_line_error(capsys, ["trace", f"{ZOO}:softmax", "--shape", "q=8,k=5x8,v=5x8"], "no index left",
                    error="UnsupportedError")
