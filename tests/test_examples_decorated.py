"""Every example in examples/decorated/ runs (small shapes: --quick), prints its derived spec and
matches the function run eagerly in float64 (each example asserts it)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

DIR = Path(__file__).resolve().parents[1] / "examples" / "decorated"
EXAMPLES = sorted(p.stem for p in DIR.glob("*.py") if p.stem != "common")


@pytest.mark.cpu
@pytest.mark.parametrize("name", EXAMPLES)
def test_decorated_example_runs(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--quick"])
    monkeypatch.syspath_prepend(str(DIR))
    sys.modules.pop("common", None)
    runpy.run_path(str(DIR / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("einattn: 1\n") and "vs float64 eager" in out and "x\n" in out
