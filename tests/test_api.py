"""The public API: load_spec from every source, zoo lookup, compile options."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import einattn
from einattn.ir import settings
from einattn.specs import zoo_path
from tests.helpers import SOFTMAX, ZOO_NAMES
from tests.zoo import LINEAR_ZOO, SPARSE_ZOO

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_public_names():
    for name in ("load_spec", "compile", "explain", "Kernel", "Spec", "zoo_names", "EinattnError", "SpecError",
                 "UnsupportedError", "BackendUnavailable", "TuningError"):
        assert hasattr(einattn, name), name


def test_zoo_names_match_the_examples():
    assert einattn.zoo_names() == sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(ZOO_NAMES + list(LINEAR_ZOO) + list(SPARSE_ZOO))


@pytest.mark.parametrize("how", ["name", "str_path", "path", "yaml_text", "spec"])
def test_load_spec_sources(how, tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(zoo_path("causal").read_text())
    source = {"name": "causal", "str_path": str(f), "path": f, "yaml_text": f.read_text(),
              "spec": einattn.load_spec("causal")}[how]
    c = einattn.load_spec(source)
    assert c.name == "causal"
    assert c == einattn.load_spec("causal")
    assert c.file == {"name": "examples/causal.yaml", "str_path": str(f), "path": str(f),
                      "yaml_text": "<string>", "spec": "examples/causal.yaml"}[how]


def test_load_spec_of_a_spec_is_identity():
    c = einattn.load_spec("softmax")
    assert einattn.load_spec(c) is c


def test_yaml_text_without_newline():
    one_line = "{einattn: 1, name: s, inputs: {Q: [m, n]}, cascade: ['O[m] = Q[m,n]'], outputs: [O]}"
    assert einattn.load_spec(one_line).stmts[0].reduced == ("n",)


def test_unknown_name_lists_the_zoo():
    with pytest.raises(einattn.SpecError) as info:
        einattn.load_spec("softmx")
    msg = str(info.value)
    assert "no spec named 'softmx'" in msg
    for name in ZOO_NAMES:
        assert name in msg


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(einattn.SpecError, match="cannot read spec file"):
        einattn.load_spec(tmp_path / "absent.yaml")
    with pytest.raises(einattn.SpecError, match="cannot read spec file"):
        einattn.load_spec(str(tmp_path / "absent.yaml"))


def test_unknown_tune_effort_is_an_error():
    with pytest.raises(einattn.TuningError, match="tune='auto': expected one of 'none', 'quick', 'full'"):
        einattn.compile("softmax", target="reference", tune="auto")


def test_compile_accepts_every_source(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SOFTMAX)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 3)
    outs = [einattn.compile(src, target="reference")(q, k, v)
            for src in ("softmax", f, str(f), SOFTMAX, einattn.load_spec(SOFTMAX))]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_explain_accepts_every_source():
    a, b = einattn.explain("softmax"), einattn.explain(SOFTMAX)
    assert (a.naive_passes, a.passes, a.rewrites) == (b.naive_passes, b.passes, b.rewrites) == \
        (3, 1, ("defer_normalization", "online_rescaling"))


def test_compile_docstring_example():
    k = einattn.compile("softmax", target="streaming", config={"BLOCK_N": 16})
    q, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8)
    assert k(q, torch.randn(1, 2, 7, 8), v).shape == torch.Size([1, 2, 5, 8])


def test_cache_dirs_point_into_a_temporary_directory(cache_root):
    for var in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "EINATTN_CACHE_DIR"):
        assert os.environ[var].startswith(cache_root)
    assert str(settings.cache_dir()).startswith(cache_root)
