"""Constructs a cascade cannot express: each raises UnsupportedError naming the user's source line
(marked ``# here`` below) and what to do instead; ``fallback="eager"`` runs them as written."""
from __future__ import annotations

import pathlib
import warnings

import pytest
import torch

import einattn

SRC = pathlib.Path(__file__).read_text().splitlines()


def _line(tag: str) -> int:
    return next(i + 1 for i, s in enumerate(SRC) if s.rstrip().endswith(f"# here: {tag}"))


def scores(q, k):
    return q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5


def branch_on_values(q, k, v):
    s = scores(q, k)
    if s.max() > 0:  # here: branch
        s = s * 2
    return torch.softmax(s, -1) @ v


def in_place(q, k, v):
    q.mul_(2.0)  # here: inplace
    return torch.softmax(scores(q, k), -1) @ v


def cumsum(q, k, v):
    p = torch.cumsum(torch.softmax(scores(q, k), -1), -1)  # here: cumsum
    return p @ v


def softmax_over_queries(q, k, v):
    p = torch.softmax(scores(q, k), dim=-2)  # here: queries
    return p @ v


def packed_heads(q, k, v, heads: int = 4):
    b, m, hd = q.shape
    q = q.view(b, m, heads, hd // heads).transpose(1, 2)  # here: packed
    k = k.view(b, k.shape[1], heads, hd // heads).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, hd // heads).transpose(1, 2)
    return torch.softmax(scores(q, k), -1) @ v


def tiled_heads(q, k, v):
    r = q.shape[1] // k.shape[1]
    k, v = k.repeat(1, r, 1, 1), v.repeat(1, r, 1, 1)  # here: tiled
    return torch.softmax(scores(q, k), -1) @ v


def sliced_keys(q, k, v):
    k, v = k[:, :, :16], v[:, :, :16]  # here: slice
    return torch.softmax(scores(q, k), -1) @ v


def gathered_heads(q, k, v, idx):
    k = k[:, idx]  # here: gather
    return torch.softmax(scores(q, k), -1) @ v


def integer_scores(q, k, v):
    s = scores(q, k).long()  # here: cast
    return torch.softmax(s.float(), -1) @ v


def two_key_blocks(q, k, v):
    s = scores(q, k)
    s2 = torch.cat([s, s], dim=-1)  # here: cat
    return torch.softmax(s2, -1)[..., : s.shape[-1]] @ v


def returns_mask(q, k, v):
    s = scores(q, k)
    return torch.softmax(s, -1) @ v, s > 0  # here: boolean


def sorts(q, k, v):
    s, _ = torch.sort(scores(q, k), dim=-1)  # here: sort
    return torch.softmax(s, -1) @ v


def _qkv(b=2, h=4, m=8, n=24, d=16):
    return torch.randn(b, h, m, d), torch.randn(b, h, n, d), torch.randn(b, h, n, d)


CASES = [
    ("branch", branch_on_values, lambda: _qkv(), "depends on tensor values"),
    ("inplace", in_place, lambda: _qkv(), "in-place write into the argument 'q'"),
    ("cumsum", cumsum, lambda: _qkv(), "cumsum"),
    ("queries", softmax_over_queries, lambda: _qkv(), "other than the keys"),
    ("packed", packed_heads, lambda: (torch.randn(2, 8, 64), torch.randn(2, 24, 64), torch.randn(2, 24, 64)),
     "splits a dimension"),
    ("tiled", tiled_heads, lambda: (torch.randn(2, 4, 8, 16), torch.randn(2, 2, 24, 16), torch.randn(2, 2, 24, 16)),
     "repeat_interleave"),
    ("slice", sliced_keys, lambda: _qkv(), "slicing a dimension"),
    ("gather", gathered_heads, lambda: (*_qkv(), torch.tensor([0, 0, 1, 1])), "index"),
    ("cast", integer_scores, lambda: _qkv(), "cast"),
    ("cat", two_key_blocks, lambda: _qkv(), "several key blocks"),
    ("boolean", returns_mask, lambda: _qkv(), "boolean output"),
    ("sort", sorts, lambda: _qkv(), "sort"),
]


@pytest.mark.parametrize("tag,fn,make,words", CASES, ids=[c[0] for c in CASES])
def test_unsupported_names_the_source_line(tag, fn, make, words):
    att = einattn.attention(fn, target="reference")
    with pytest.raises(einattn.UnsupportedError) as info:
        att(*make())
    msg = str(info.value)
    assert f"test_unsupported.py:{_line(tag)}" in msg, msg
    assert words in msg, msg


def test_fallback_eager_runs_the_function_and_warns_once():
    att = einattn.attention(cumsum, target="reference", fallback="eager")
    q, k, v = _qkv()
    with pytest.warns(UserWarning, match="runs eagerly") as rec:
        out = att(q, k, v)
    assert len(rec) == 1 and "cumsum" in str(rec[0].message)
    torch.testing.assert_close(out, cumsum(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(att(q, k, v), cumsum(q, k, v))


def test_bad_fallback_is_refused():
    with pytest.raises(einattn.UnsupportedError, match="fallback"):
        einattn.attention(cumsum, fallback="slow")


def test_a_first_call_with_an_empty_dim_is_refused():
    att = einattn.attention(scores_only, target="reference")
    with pytest.raises(einattn.UnsupportedError, match="size 0"):
        att(*_qkv(m=0))


def scores_only(q, k, v):
    return torch.softmax(scores(q, k), -1) @ v
