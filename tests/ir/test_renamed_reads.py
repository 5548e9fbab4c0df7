"""An input read along other indices than its declared ones (a dimension declared with an index
of its own, ``C: [b, h, t]``, read as ``C[b,h,m]`` and ``C[b,h,n]``): accepted where no statement
names the declared index, sizes checked at the call, the same numbers on every target."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.ir import SpecError, bind_sizes
from tests.helpers import assert_rel_close

# the Forgetting Transformer's gate: a cumulative log-forget value per position, read along
# the query and the key index of one input
FOX = """
einattn: 1
name: forgetting
inputs:
  Q: [b, h, m, d]
  K: [b, h, n, d]
  V: [b, h, n, e]
  C: [b, h, t]
params:
  scale: 1 / sqrt(d)
cascade:
  - S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale
  - T[b,h,m,n] = where(n <= m, S[b,h,m,n] + C[b,h,m] - C[b,h,n], -inf)
  - M[b,h,m] max= T[b,h,m,n]
  - P[b,h,m,n] = exp(T[b,h,m,n] - M[b,h,m])
  - L[b,h,m] = P[b,h,m,n]
  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]
outputs: [O]
"""


def fox_inputs(n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for _ in range(3))
    c = torch.nn.functional.logsigmoid(torch.randn(2, 3, n, generator=g) + 3).cumsum(-1)
    return q, k, v, c


def torch_fox(q, k, v, c):
    q, k, v, c = (x.double() for x in (q, k, v, c))
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + c[..., :, None] - c[..., None, :]
    n = q.shape[-2]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def test_reference_matches_plain_torch():
    x = fox_inputs()
    assert_rel_close(einattn.compile(FOX, target="reference")(*x), torch_fox(*x), 1e-12)


@pytest.mark.cpu
@pytest.mark.parametrize("target,options", [("streaming", {}), ("cpu", {}),
                                            ("cuda", {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}})])
def test_every_target_reads_one_input_along_two_indices(target, options):
    x = fox_inputs()
    assert_rel_close(einattn.compile(FOX, target=target, **options)(*x), torch_fox(*x), 1e-4, target)


def test_sizes_must_agree_at_the_call():
    c = einattn.load_spec(FOX)
    shapes = {"Q": (2, 3, 40, 16), "K": (2, 3, 40, 16), "V": (2, 3, 40, 16), "C": (2, 3, 30)}
    with pytest.raises(SpecError, match=r"reads input 'C' along 'm' at its dim 't'.*40.*30"):
        bind_sizes(c, shapes)
    bind_sizes(c, {**shapes, "C": (2, 3, 40)})


def test_a_declared_index_that_statements_use_is_still_read_by_its_name():
    # C's dim is 'n', which the cascade uses: C[b,h,m] is most likely a typo, refused with the way out
    with pytest.raises(SpecError, match=r"with index 'm' where 'n' is declared.*an index of its own"):
        einattn.load_spec(FOX.replace("C: [b, h, t]", "C: [b, h, n]"))
    # the classic typo stays an error: Q read along the key index
    with pytest.raises(SpecError, match=r"reads input 'Q' with index 'n' where 'm' is declared"):
        einattn.load_spec(FOX.replace("Q[b,h,m,d] * K", "Q[b,h,n,d] * K"))
