"""Mask decisions over a whole call (``compiler.masks.domain_decision``), checked against the
predicate evaluated on every (query, key)."""
from __future__ import annotations

import pytest


def _mask_of(name: str):
    from einattn.compiler import make_kernel_plan, make_plan
    from einattn.specs import load_spec
    kp = make_kernel_plan(make_plan(load_spec(name)))
    return kp, kp.passes[0].mask


@pytest.mark.parametrize("name, m, n, params, full", [
    ("causal_bottom_right", 1, 8192, {"off": 8191}, True),       # a decoding step sees every key
    ("causal_bottom_right", 4, 8192, {"off": 8188}, False),      # its first row misses 3 keys
    ("causal", 1, 8192, {}, False),
    ("causal", 1, 1, {}, True),
    ("sliding_window", 1, 100, {"W": 128}, False),               # n <= m hides keys past the row
    ("prefix_lm", 5, 5, {"P": 5}, True),                         # every key is in the prefix
])
def test_domain_decision_is_exact_at_the_corners(name, m, n, params, full):
    import torch
    from einattn.compiler.masks import domain_decision
    kp, mask = _mask_of(name)
    got_full, got_empty = domain_decision(mask, kp.query, kp.key, m, n, params)
    assert got_full is full and got_empty is False
    # brute force: the predicate on every (query, key) of the call
    i, j = torch.meshgrid(torch.arange(m), torch.arange(n), indexing="ij")
    env = {"m": i, "n": j, **{k: torch.tensor(v) for k, v in params.items()}}
    vis = eval_predicate(mask, env)
    assert bool(vis.all()) is full


def eval_predicate(e, env):
    from einattn.ir import Op
    if e.op is Op.CONST:
        return e.arg
    if e.op in (Op.PARAM, Op.INDEX):
        return env[e.arg]
    a = [eval_predicate(s, env) for s in e.src]
    return {Op.ADD: lambda: a[0] + a[1], Op.SUB: lambda: a[0] - a[1], Op.MUL: lambda: a[0] * a[1],
            Op.NEG: lambda: -a[0], Op.LT: lambda: a[0] < a[1], Op.LE: lambda: a[0] <= a[1],
            Op.GT: lambda: a[0] > a[1], Op.GE: lambda: a[0] >= a[1], Op.EQ: lambda: a[0] == a[1],
            Op.AND: lambda: a[0] & a[1], Op.OR: lambda: a[0] | a[1], Op.NOT: lambda: ~a[0]}[e.op]()


@pytest.mark.parametrize("name, m, n, params", [
    ("causal_bottom_right", 4, 8192, {"off": 8188}), ("causal_bottom_right", 16, 300, {"off": 284}),
    ("causal_bottom_right", 16, 5, {"off": -11}), ("causal", 1, 300, {}), ("causal", 77, 131, {}),
    ("sliding_window", 3, 1000, {"W": 128}), ("prefix_lm", 40, 300, {"P": 20})])
@pytest.mark.parametrize("block_m, block_n", [(1, 64), (16, 64), (64, 256)])
def test_tiles_hidden_matches_brute_force(name, m, n, params, block_m, block_n):
    """True exactly when some (query block, key tile) is false everywhere: checked on every
    element (for these affine masks the corner test is exact)."""
    import torch
    from einattn.compiler.masks import tiles_hidden
    kp, mask = _mask_of(name)
    i, j = torch.meshgrid(torch.arange(m), torch.arange(n), indexing="ij")
    vis = eval_predicate(mask, {"m": i, "n": j, **{k: torch.tensor(v) for k, v in params.items()}})
    vis = vis & torch.ones(m, n, dtype=torch.bool)
    empty = any(not bool(vis[a:a + block_m, b:b + block_n].any())
                for a in range(0, m, block_m) for b in range(0, n, block_n))
    assert tiles_hidden(mask, kp.query, kp.key, m, n, block_m, block_n, params) is empty
