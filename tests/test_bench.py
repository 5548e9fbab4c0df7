"""The benchmark harness (``einattn bench``, einattn/bench/): FLOP counting, peers, n/a, JSON.

No timing assertions: only the harness's logic and the peers' numerics.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

import einattn
from einattn.cli import build_parser, main
from einattn.bench import harness, memory
from einattn.bench import peers as PEERS
from einattn.bench.flops import count_flops
from einattn.commands import bench_cmd
from einattn.ir import SpecError, bind_sizes, eval_params
from tests.helpers import assert_rel_close
from tests.zoo import ZOO, sizes


def _flops(name: str, **sz) -> dict:
    spec = einattn.load_spec(name)
    full = {**dict(b=1, h=2, m=8, n=8, d=4, e=4), **sz}
    x = harness.bench_inputs(spec, full, torch.float32)
    s = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    return count_flops(spec, s, eval_params(spec, s))


@pytest.mark.parametrize("name, sz, want", [
    ("softmax", {}, 4 * 1 * 2 * 8 * 8 * 4),
    ("softmax", dict(d=4, e=6), 2 * 1 * 2 * 8 * 8 * (4 + 6)),
    ("causal", {}, 4 * 2 * 4 * 36),                    # 36 of 64 pairs visible (n <= m)
    ("causal_bottom_right", dict(m=4, n=6), 4 * 2 * 4 * 18),  # row m sees m + 3 keys: 3+4+5+6
    ("sliding_window", dict(m=8, n=8), 4 * 2 * 4 * 36),       # W = 32 > N: the causal triangle
    ("prefix_lm", dict(m=8, n=8), 4 * 2 * 4 * 64),             # P = 16 > N: everything visible
    ("differential", {}, 2 * 4 * 2 * 8 * 8 * 4),              # two score and two value contractions
    ("centered_relu", {}, 4 * 2 * 8 * 8 * 4),                 # 2 passes; recomputed scores not counted
    ("gqa", dict(h=4, g=2), 4 * 4 * 8 * 8 * 4),                # counted per query head
])
def test_flop_count(name, sz, want):
    assert _flops(name, **sz)["flops"] == want


def test_flop_count_param_changes_the_visible_fraction():
    spec = einattn.load_spec("sliding_window")
    s = dict(b=1, h=1, m=10, n=10, d=4, e=4)
    fl = count_flops(spec, s, eval_params(spec, s, {"W": 3}))
    assert fl["visible_fraction"] == {"(n <= m) & (n > m - W)": (1 + 2 + 3 * 8) / 100}


@pytest.mark.parametrize("name", sorted(PEERS.MASKS))
def test_visible_fraction_matches_the_peers_dense_mask(name):
    path = PEERS.extra_specs().get(name)
    spec = einattn.load_spec(str(path) if path else name)
    s = dict(b=1, h=1, m=37, n=53, d=4, e=4)
    params = eval_params(spec, s, {"sliding_window": {"W": 9}, "prefix_lm": {"P": 5}}.get(name, {}))
    frac = count_flops(spec, s, params)["visible_fraction"]
    (got,) = frac.values()
    assert got == float(PEERS.dense_mask(name, 37, 53, params).double().mean())


def _zoo_case(name: str):
    spec = einattn.load_spec(name)
    x = ZOO[name].make_inputs(sizes(d=8, e=8), torch.Generator().manual_seed(0))
    s = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    return spec, x, eval_params(spec, s)


@pytest.mark.parametrize("kind", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(ZOO))
def test_peer_matches_the_float64_oracle(kind, name):
    spec, x, params = _zoo_case(name)
    p = PEERS.make_peer(kind, name, x, params)
    if kind == "eager":
        assert p.available, p.note      # every variant has an eager peer
    if not p.available:
        assert p.note
        return
    assert_rel_close(p.fn(), ZOO[name].torch_ref(x, params), 1e-4, f"{kind} {name}: {p.note}")


@pytest.mark.slow
def test_flex_peer_matches_the_float64_oracle():
    # torch.compile of flex_attention takes ~10 s on CPU: one variant with a block mask and a score_mod
    spec, x, params = _zoo_case("alibi")
    p = PEERS.make_peer("flex", "alibi", x, params)
    assert_rel_close(p.fn(), ZOO["alibi"].torch_ref(x, params), 1e-4, p.note)


@pytest.mark.parametrize("kind, name", [("sdpa", "sigmoid"), ("sdpa", "lse"), ("sdpa", "softcap"),
                                        ("flex", "lse"), ("flex", "signed"), ("flex", "centered_relu")])
def test_inexpressible_peer_is_na_with_a_reason(kind, name):
    spec, x, params = _zoo_case(name)
    p = PEERS.make_peer(kind, name, x, params)
    assert not p.available and p.note


def test_non_zoo_spec_gets_only_the_eager_reference_peer():
    text = einattn.load_spec("softmax").canonical()   # same cascade, but not under a zoo name
    spec = einattn.load_spec("softmax")
    renamed = einattn.load_spec(PEERS.extra_specs()["softcap_sliding_window"].read_text()
                                .replace("name: softcap_sliding_window", "name: my_variant"))
    assert PEERS.zoo_name(spec) == "softmax" and text
    assert PEERS.zoo_name(renamed) is None
    x = harness.bench_inputs(renamed, dict(b=1, h=2, m=9, n=9, d=4, e=4), torch.float32)
    s = bind_sizes(renamed, {k: tuple(v.shape) for k, v in x.items()})
    params = eval_params(renamed, s)
    peers = {p["name"]: p for p in PEERS.make_peers(["sdpa", "flex", "eager"], renamed, x, params)}
    assert peers["sdpa"]["fn"] is None and peers["flex"]["fn"] is None
    want = einattn.compile(renamed, target="reference")(**x)
    assert_rel_close(peers["eager"]["fn"](), want, 1e-5)


def test_unknown_peer_is_an_error():
    with pytest.raises(SpecError, match="unknown peer"):
        PEERS.peer_list("sdpa,cudnn")
    assert PEERS.peer_list("none") == []


def test_alibi_inputs_are_the_geometric_slopes():
    x = harness.bench_inputs(einattn.load_spec("alibi"), dict(b=1, h=4, m=3, n=3, d=2, e=2), torch.float32)
    assert torch.equal(x["slope"], torch.tensor([2.0 ** (-2 * (i + 1)) for i in range(4)]))


def test_argv_round_trip_and_memory_shape():
    argv = ["bench", "sliding_window", "--target", "streaming", "--shape", "b=1,h=2,m=8,n=8,d=4,e=4",
            "--param", "W=3", "--against", "eager", "--reps", "2", "--memory", "--cold"]
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(bench_cmd._argv(args))
    assert {k: v for k, v in vars(again).items() if k != "run"} == {k: v for k, v in vars(args).items() if k != "run"}
    assert memory.memory_shape({"b": 2, "h": 8, "g": 2, "m": 8, "n": 8, "d": 4, "e": 4}, args.memory_shape) == \
        "b=1,h=1,g=1,m=16384,n=16384,d=4,e=4"


def test_report_prints_na_rows():
    res = {"spec": "sigmoid", "target": "streaming", "dtype": "float32", "shape": {"m": 2}, "params": {},
           "config": None, "threads": 2, "peak_gflops": 474.0, "peak_source": "x", "warmup": 1, "reps": 1,
           "flops": {"flops": 1e6, "terms": "S"}, "compile": {"backend_import_s": 0.0, "compile_s": 0.1, "first_call_s": 0.2, "cache": "c"},
           "checked_against": "float64 reference",
           "results": [{"name": "einattn", "available": True, "note": "t", "ms_median": 1.0, "ms_min": 0.9,
                        "gflops": 1.0, "pct_peak": 0.2, "first_call_s": 0.2, "max_err": 1e-7, "err_ok": True},
                       {"name": "sdpa", "available": False, "note": "not expressible"}]}
    text = bench_cmd.report(res)
    assert "sdpa           n/a  not expressible" in text


def test_json_of_a_tiny_run(tmp_path, capfd):
    out = tmp_path / "b.json"
    rc = main(["bench", "causal", "--target", "streaming", "--shape", "b=1,h=2,m=40,n=40,d=16,e=16",
               "--against", "eager,sdpa", "--warmup", "1", "--reps", "2", "--json", str(out)])
    text = capfd.readouterr().out
    assert rc == 0, text
    assert "OMP_WAIT_POLICY=PASSIVE" in text and "threads: " in text
    res = json.loads(out.read_text())
    assert res["env"] == {"OMP_WAIT_POLICY": "PASSIVE", "TVM_THREAD_POOL_SPIN_COUNT": "0"}
    assert res["flops"]["flops"] == 4 * 2 * 16 * (40 * 41 // 2)
    assert res["checked_against"] == "float64 reference"
    rows = {r["name"]: r for r in res["results"]}
    assert list(rows) == ["einattn", "eager", "sdpa"]
    for r in rows.values():
        assert r["available"] and len(r["times_ms"]) == 2 and r["err_ok"] and r["max_err"] < 1e-5
        assert math.isclose(r["gflops"], res["flops"]["flops"] / r["ms_median"] / 1e6)
    assert "einattn_speedup" in rows["sdpa"] and res["compile"]["compile_s"] >= 0


def test_backward_bench_checks_every_gradient():
    res = harness.run_bench(harness.BenchOptions("alibi", target="streaming", shape="b=1,h=2,m=24,n=24,d=8,e=8",
                                                 against="sdpa,eager", warmup=1, reps=1, backward=True))
    assert res["backward"] and res["checked_against"] == "float64 reference (torch.autograd)"
    rows = {r["name"]: r for r in res["results"]}
    for name in ("einattn", "sdpa", "eager"):
        assert rows[name]["available"] and rows[name]["err_ok"], rows[name]
    assert "slope requires grad" in rows["sdpa"]["note"]
    assert res["flops"]["flops"] == 3.5 * count_flops(einattn.load_spec("alibi"),
                                                      {"b": 1, "h": 2, "m": 24, "n": 24, "d": 8, "e": 8},
                                                      res["params"])["flops"]
