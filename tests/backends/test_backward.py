"""The derived backward on every target: gradients against torch.autograd of the zoo's eager
oracles (float64), at odd shapes (m != n, not multiples of the blocks), with fully masked
rows (zero gradients, never NaN), float64 gradcheck on the streaming target and fp16 in
Triton's interpreter."""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.backends.torch.reference import run_reference
from einattn.ir import bind_sizes, eval_params
from tests.compiler.test_autodiff import zoo_grads
from tests.helpers import ZOO_NAMES, as_tuple
from tests.zoo import ZOO, sizes

pytestmark = pytest.mark.cpu
OPTIONS = {"streaming": {"config": {"BLOCK_N": 16}}, "cpu": {},
           "cuda": {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}}}


def _inputs(name, seed=1, dtype=torch.float32, **sz):
    x = ZOO[name].make_inputs(sizes(**sz), torch.Generator().manual_seed(seed))
    return {k: t.to(dtype) for k, t in x.items()}


def _grad_case(name, target, dtype=torch.float32, **sz):
    """(gradients of the compiled kernel, the float64 oracle's, the incoming gradients)."""
    x = _inputs(name, **sz)
    outs64 = as_tuple(ZOO[name].torch_ref({k: t.double() for k, t in x.items()}, ZOO[name].params))
    g = torch.Generator().manual_seed(7)
    grads = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs64)
    want = zoo_grads(name, {k: t.double() for k, t in x.items()}, grads)
    k = einattn.compile(name, target=target, **OPTIONS[target])
    xs = {n: t.to(dtype).requires_grad_() for n, t in x.items()}
    out = as_tuple(k(**xs))
    assert all(o.grad_fn is not None for o in out)
    torch.autograd.backward(out, [gr.to(o.dtype) for gr, o in zip(grads, out)])
    return {n: t.grad for n, t in xs.items()}, want, x


def _rel(got, want) -> float:
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("target", list(OPTIONS))
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_gradients(name, target):
    got, want, _ = _grad_case(name, target, m=37, n=53)
    for k in want:
        assert got[k] is not None and torch.isfinite(got[k]).all(), k
        assert _rel(got[k], want[k]) <= 1e-4, (k, _rel(got[k], want[k]))


@pytest.mark.parametrize("target", list(OPTIONS))
def test_fully_masked_rows_get_zero_gradients(target):
    # bottom-right causal with M > N: the first M - N query rows see no key
    got, want, _ = _grad_case("causal_bottom_right", target, m=45, n=20)
    assert torch.equal(got["Q"][:, :, :25], torch.zeros_like(got["Q"][:, :, :25]))
    for k in want:
        assert torch.isfinite(got[k]).all()
        assert _rel(got[k], want[k]) <= 1e-4


@pytest.mark.parametrize("name,wrt", [("softmax", "V"), ("alibi", "slope"), ("sinks", "t"), ("gated", "G"),
                                      ("centered_relu", "Q"), ("differential", "lam")])
def test_gradcheck_float64_streaming(name, wrt):
    x = _inputs(name, dtype=torch.float64, b=1, h=2, m=5, n=7, d=3, e=3, g=1)
    k = einattn.compile(name, target="streaming", config={"BLOCK_N": 4})
    names = list(x)

    def fn(*ts):
        return k(**dict(zip(names, ts)))
    args = [t.requires_grad_(n == wrt or n == "Q") for n, t in x.items()]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_only_some_outputs_used_and_only_some_inputs_require_grad():
    x = _inputs("lse", m=9, n=21)
    k = einattn.compile("lse", target="cpu")
    q = x["Q"].clone().requires_grad_()
    o, lse = k(q, x["K"], x["V"])
    assert lse.grad_fn is not None
    lse.sum().backward()                               # O's gradient is None: taken as zero
    ref = {n: t.double().requires_grad_(n == "Q") for n, t in x.items()}
    _, want_lse = ZOO["lse"].torch_ref(ref, {})
    want = torch.autograd.grad(want_lse.sum(), ref["Q"])[0]
    assert _rel(q.grad, want) <= 1e-4


def test_no_grad_and_detached_calls_run_the_inference_kernel():
    x = _inputs("softmax", m=9, n=21)
    k = einattn.compile("softmax", target="cpu")
    q = x["Q"].requires_grad_()
    with torch.no_grad():
        assert k(q, x["K"], x["V"]).grad_fn is None
    assert not hasattr(k, "_training") or not k._training


@pytest.mark.parametrize("name", ["softmax", "causal", "sigmoid"])
def test_fp16_in_the_interpreter_within_eager_error(name):
    x = _inputs(name, dtype=torch.float16, m=37, n=53)
    spec = einattn.load_spec(name)
    out64 = as_tuple(ZOO[name].torch_ref({k: t.double() for k, t in x.items()}, {}))
    grads = tuple(torch.randn(o.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
                  for o in out64)
    want = zoo_grads(name, {k: t.double() for k, t in x.items()}, grads)
    # eager: autograd through the same cascade evaluated in float16
    xe = {k: t.clone().requires_grad_() for k, t in x.items()}
    sz = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    eo = run_reference(spec, xe, sz, eval_params(spec, sz, {}), torch.float16)
    torch.autograd.backward([eo[o] for o in spec.outputs], [g.half() for g in grads])
    k = einattn.compile(name, target="cuda", **OPTIONS["cuda"])
    xs = {k_: t.clone().requires_grad_() for k_, t in x.items()}
    torch.autograd.backward(as_tuple(k(**xs)), [g.half() for g in grads])
    for n in x:
        assert xs[n].grad.dtype == torch.float16
        eager = _rel(xe[n].grad, want[n])
        assert _rel(xs[n].grad, want[n]) <= max(5 * eager, 2e-3), (n, eager)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_few_keys_run_the_dkv_kernel_as_a_decode_program(target):
    # the dkv kernel's query rows are the keys: 7 of them take the decode program, whose
    # query index is then 'n' and key index 'm' (a regression: the renamed sizes clobbered)
    got, want, _ = _grad_case("softmax", target, m=9, n=7)
    for k in want:
        assert _rel(got[k], want[k]) <= 1e-4, k


def test_a_trained_kernel_pickles_and_copies():
    import copy
    import pickle
    x = _inputs("softmax", m=9, n=21)
    k = einattn.compile("softmax", target="cpu")
    q = x["Q"].clone().requires_grad_()
    k(q, x["K"], x["V"]).sum().backward()
    for other in (pickle.loads(pickle.dumps(k)), copy.deepcopy(k)):
        q2 = x["Q"].clone().requires_grad_()
        other(q2, x["K"], x["V"]).sum().backward()
        assert torch.equal(q2.grad, q.grad)
