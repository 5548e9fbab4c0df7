"""The selection rules (backends/torch/selection.py, docs/spec.md) and the block lists."""
from __future__ import annotations

import math

import pytest
import torch

from einattn.backends.torch.selection import block_lists, select

INF = math.inf


def kept(row, kind, value):
    return select(torch.tensor([row], dtype=torch.float64), kind, value)[0].nonzero().flatten().tolist()


@pytest.mark.parametrize("row, k, want", [
    ([0.1, 0.5, 0.3, 0.2], 2, [1, 2]),
    ([0.5, 0.5, 0.5, 0.1], 2, [0, 1]),                  # ties: the lower coordinate first
    ([0.5, INF, 0.7, 0.1], 2, [1, 2]),                  # +inf always in and counted in k
    ([INF, INF, INF, 0.1], 2, [0, 1, 2]),               # +inf kept even past k
    ([0.1, -INF, -INF, 0.2], 3, [0, 3]),                # -inf never, k past the candidates
    ([math.nan, 0.3, 0.2, -INF], 2, [1, 2]),            # NaN never
    ([0.1, 0.2, INF], 0, [2]),                          # k = 0: only the always-in blocks
    ([-INF, -INF], 1, []),                              # an empty selection
])
def test_topk_rules(row, k, want):
    assert kept(row, "topk", k) == want


@pytest.mark.parametrize("row, p, want", [
    ([0.0, math.log(3.0), -INF, 0.0], 0.5, [1]),        # masses 0.2, 0.6, 0, 0.2
    ([0.0, math.log(3.0), -INF, 0.0], 0.7, [0, 1]),     # 0.6 < 0.7: the next (tie: lower first)
    ([0.0, math.log(3.0), -INF, 0.0], 1.0, [0, 1, 3]),
    ([0.0, math.log(3.0), INF, 0.0], 0.0, [2]),         # p = 0: only the always-in blocks
    ([math.nan, 0.0, INF], 0.5, [1, 2]),
])
def test_topp_rules(row, p, want):
    assert kept(row, "topp", p) == want


def test_block_lists_are_the_union_of_each_tiles_rows():
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 3, 37, 9, generator=g) < 0.2).double()
    bl = block_lists(mask, 8)
    assert bl["kv_num_blocks"].shape == (2, 3, 5) and bl["kv_indices"].dtype == torch.int32
    for t in range(5):
        union = mask[..., t * 8:(t + 1) * 8, :].amax(-2) > 0
        for b in range(2):
            for h in range(3):
                c = int(bl["kv_num_blocks"][b, h, t])
                assert bl["kv_indices"][b, h, t, :c].tolist() == union[b, h].nonzero().flatten().tolist()
                assert sorted(bl["kv_indices"][b, h, t].tolist()) == list(range(9))
    for j in range(9):
        c = int(bl["q_num_blocks"][1, 2, j])
        want = [t for t in range(5) if mask[1, 2, t * 8:(t + 1) * 8, j].any()]
        assert bl["q_indices"][1, 2, j, :c].tolist() == want
