"""`einattn compile` writes the kernel source, the compiled files and report.json; `einattn targets` lists."""
from __future__ import annotations

import json

import pytest

from einattn.cli import main

pytest.importorskip("triton")

SHAPE = "b=1,h=4,m=128,n=128,d=64,e=64"


@pytest.mark.parametrize("target,suffixes,marker", [
    ("cuda:sm_90", ("ptx", "cubin"), ".target sm_90a"),
    ("rocm:gfx942", ("amdgcn", "hsaco"), "gfx942"),
])
def test_compile_writes_files_and_report(tmp_path, capsys, target, suffixes, marker):
    out = tmp_path / "k"
    rc = main(["compile", "causal", "--target", target, "--shape", SHAPE,
               "--config", "BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=2", "--dtype", "float16", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    for f in rep["files"]:
        assert (out / f).exists(), f
    name = rep["kernel"]
    assert marker in (out / f"{name}.{suffixes[0]}").read_text()
    assert (out / f"{name}.{suffixes[1]}").read_bytes()[:4] == b"\x7fELF"
    assert "tl.dot" in (out / "kernel.py").read_text()
    # the config the call at this shape runs: m = 128 takes the tile program, no split (causal)
    assert rep["config"] == {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "KV_SPLITS": 1,
                             "PROGRAM": "tile", "PACK": 1}
    assert rep["target"]["target"] == target and rep["dtype"] == "float16"
    assert rep["plan"]["passes"] == 1 and rep["plan"]["schedule"][0]["mask"] == "n <= m"
    assert rep["resources"]["shared_memory"] > 0 and rep["resources"]["registers"] > 0
    # the key loops of the machine code (full tiles, diagonal tiles) with their instruction counts
    assert len(rep["loops"]) == 2 and all(lp["instructions"] > 0 and lp["mma"] > 0 for lp in rep["loops"])
    printed = capsys.readouterr().out
    assert "shared memory" in printed and "loop 1:" in printed and "matrix-multiply" in printed


def test_compile_default_dtype_is_float16_and_says_so(tmp_path, capsys):
    out = tmp_path / "k"
    assert main(["compile", "softmax", "--target", "cuda:sm_80", "--shape", SHAPE, "--out", str(out)]) == 0
    assert "float16 (default --dtype)" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["dtype"] == "float16"


def test_compile_reports_the_constexprs_the_params_and_lengths_set(tmp_path, capsys):
    """A launcher of the files needs the specialisation: EVEN_N from the key length, FOLD_S from the
    sign of the scale (--param), TMA from the layout; a negative scale compiles the unfolded kernel."""
    got = {}
    for shape, param in ((SHAPE, []), ("b=1,h=4,m=128,n=100,d=64,e=64", ["--param", "scale=-0.5"])):
        out = tmp_path / f"k{len(got)}"
        assert main(["compile", "causal", "--target", "cuda:sm_90", "--shape", shape, *param,
                     "--out", str(out)]) == 0, capsys.readouterr().err
        rep = json.loads((out / "report.json").read_text())
        got[bool(param)] = (rep["constexprs"]["EVEN_N"], rep["constexprs"]["FOLD_S"], rep["loops"][0]["instructions"])
        assert rep["constexprs"]["TMA"] is True      # sm_90, contiguous fp16 rows of 128 bytes
    assert got[False][:2] == (True, True) and got[True][:2] == (False, False), got
    assert got[True][2] > got[False][2]          # the score keeps its multiply


def test_compile_rejects_config_that_cannot_fit(tmp_path, capsys):
    rc = main(["compile", "softmax", "--target", "rocm:gfx90a", "--shape", SHAPE,
               "--config", "BLOCK_N=1024,num_stages=4", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "UnsupportedError" in err and "limit is 65536" in err
    assert not (tmp_path / "x").exists()


def test_compile_needs_a_gpu_target(tmp_path, capsys):
    assert main(["compile", "softmax", "--target", "cpu", "--shape", SHAPE, "--out", str(tmp_path)]) == 2
    assert "cuda" in capsys.readouterr().err


def test_targets_lists_hardware_and_host(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("A100", "H100", "MI250X", "MI300X", "cuda:sm_90", "rocm:gfx942", "host:"):
        assert name in out
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["host"]["cpu"] and all("sources" in t for t in data["targets"])


def test_compile_a_decoding_shape_writes_the_decode_program(tmp_path):
    """m = 1 against 4096 keys: PROGRAM auto takes the decode program, packs the GQA group and
    splits the key loop; kernel.py is the source that was compiled."""
    out = tmp_path / "k"
    assert main(["compile", "gqa", "--target", "cuda:sm_90", "--shape", "b=1,h=32,g=8,m=1,n=4096,d=128,e=128",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["PROGRAM"] == "decode" and rep["config"]["PACK"] == 4
    assert rep["config"]["KV_SPLITS"] > 1
    assert "combine" in (out / "kernel.py").read_text()


def test_compile_without_cuobjdump_reports_instead_of_failing(tmp_path, capsys, monkeypatch):
    """A Triton install without its bundled cuobjdump: the kernel is still written, exit 0, and the
    report says why its loops were not counted."""
    from pathlib import Path

    import einattn.backends.triton.sass as sass
    monkeypatch.setattr(sass, "cuobjdump_path", lambda: Path("/nonexistent/cuobjdump"))
    out = tmp_path / "k"
    rc = main(["compile", "softmax", "--target", "cuda:sm_90", "--shape", SHAPE, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert "FileNotFoundError" in rep["loops"][0]["error"]
    assert "loops not counted" in capsys.readouterr().out
