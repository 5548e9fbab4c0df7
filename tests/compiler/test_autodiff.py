"""The derived backward (compiler/autodiff.py) against torch.autograd, in float64.

The oracle is torch.autograd applied to the zoo's hand-written eager implementations
(tests/zoo.py); the derived backward cascade runs on the float64 reference executor,
with the saved values the training forward outputs.
"""
from __future__ import annotations

import pytest
import torch

import einattn
from einattn.compiler.autodiff import derive
from einattn.autograd import reference_gradients
from einattn.compiler.derivative import derivative
from einattn.ir import Expr, Op, Sub, UnsupportedError
from tests.helpers import ZOO_NAMES, as_tuple
from tests.zoo import ZOO, sizes


def zoo_grads(name: str, x: dict, grads: tuple) -> dict:
    """torch.autograd of the zoo's eager oracle: gradient per input (zeros where unused)."""
    v = ZOO[name]
    xs = {k: t.detach().double().requires_grad_() for k, t in x.items()}
    out = as_tuple(v.torch_ref(xs, v.params))
    got = torch.autograd.grad(out, list(xs.values()), grads, allow_unused=True)
    return {k: torch.zeros_like(t) if g is None else g for (k, t), g in zip(xs.items(), got)}


def derived_grads(c, x: dict, grads: tuple, wrt=None, params: dict | None = None) -> dict:
    """The derived backward of ``c`` on the reference executor, in float64."""
    return reference_gradients(c, x, grads, wrt, params)


def _case(name: str, seed: int = 1, **size_overrides):
    x = {k: t.double() for k, t in
         ZOO[name].make_inputs(sizes(**size_overrides), torch.Generator().manual_seed(seed)).items()}
    c = einattn.load_spec(name)
    outs = as_tuple(ZOO[name].torch_ref(x, ZOO[name].params))
    g = torch.Generator().manual_seed(seed + 100)
    grads = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs)
    return c, x, grads


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_gradients_match_autograd(name):
    c, x, grads = _case(name)
    want = zoo_grads(name, x, grads)
    got = derived_grads(c, x, grads, params=ZOO[name].params)
    for k in x:
        assert not got[k].isnan().any(), k
        assert _rel(got[k], want[k]) <= 1e-9, (k, _rel(got[k], want[k]))


@pytest.mark.parametrize("name,wrt", [("softmax", ("V",)), ("alibi", ("slope",)), ("gqa", ("K", "Q")),
                                      ("differential", ("lam", "Q2")), ("gated", ("G",))])
def test_subsets_of_inputs(name, wrt):
    c, x, grads = _case(name)
    want = zoo_grads(name, x, grads)
    bw = derive(c, wrt)
    assert bw.wrt == tuple(t.name for t in c.inputs if t.name in wrt)
    got = derived_grads(c, x, grads, wrt, ZOO[name].params)
    for k in bw.wrt:
        assert _rel(got[k], want[k]) <= 1e-9, k


def test_fully_masked_rows_get_zero_gradients():
    # bottom-right causal with more queries than keys: the first m - n rows see no key
    c, x, grads = _case("causal_bottom_right", m=40, n=24)
    got = derived_grads(c, x, grads)
    want = zoo_grads("causal_bottom_right", x, grads)
    assert torch.equal(got["Q"][:, :, :16], torch.zeros_like(got["Q"][:, :, :16]))
    for k in x:
        assert torch.isfinite(got[k]).all()
        assert _rel(got[k], want[k]) <= 1e-9, k


def test_softmax_backward_is_flash_attention_2():
    bw = derive(einattn.load_spec("softmax"))
    assert bw.cut == ("M",)                          # stop-gradient: no one-hot argmax term
    assert bw.saved == ("M", "L", "O")               # per-row values and the output, never [m, n]
    assert all("n" not in bw.forward.stmt(s).indices for s in bw.saved)
    # the row term D = sum_e dO * O / L, not a sum over [m, n, e]
    d = next(s for s in bw.cascade.stmts if s.name.startswith("dL"))
    assert d.indices == ("b", "h", "m") and d.reduced == ("e",)
    # no statement of the backward reduces over more than one index
    assert all(len(s.reduced) <= 1 for s in bw.cascade.stmts)


def test_genuine_max_routes_to_the_argmax_with_ties_split():
    c = einattn.load_spec("""
einattn: 1
name: maxpool
inputs: {Q: [b, m, d], K: [b, n, d]}
cascade:
  - S[b,m,n] = Q[b,m,d] * K[b,n,d]
  - M[b,m] max= S[b,m,n]
  - O[b,m] = M[b,m] * 2.0
outputs: [O]
""")
    assert derive(c).cut == ()
    q = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    k = torch.tensor([[[3.0], [3.0], [1.0]]], dtype=torch.float64)     # ties in both rows
    g = torch.ones(1, 2, dtype=torch.float64)
    got = derived_grads(c, {"Q": q, "K": k}, (g,))
    qs, ks = q.clone().requires_grad_(), k.clone().requires_grad_()
    want = torch.autograd.grad((2 * (qs @ ks.transpose(-1, -2)).amax(-1)).sum(), [qs, ks])
    assert torch.allclose(got["Q"], want[0]) and torch.allclose(got["K"], want[1])


def test_diagonal_read_is_refused():
    # a repeated index in one read cannot be written in a spec (the parser refuses it), so build it
    from einattn.ir import Cascade, Reduce, Stmt, TensorDecl
    r = lambda t, *i: Expr.read(t, tuple(Sub(j) for j in i))      # noqa: E731
    c = Cascade((TensorDecl("Q", ("m", "d")), TensorDecl("K", ("n", "d"))), (),
                (Stmt("S", ("m", "n"), Reduce.SUM, Expr(Op.MUL, (r("Q", "m", "d"), r("K", "n", "n")))),), ("S",))
    with pytest.raises(UnsupportedError, match="repeats an index"):
        derive(c)


X = Expr.read("X", (Sub("i"),))
RULES = ["exp", "exp2", "log", "log2", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "softplus", "abs", "sign",
         "square"]


@pytest.mark.parametrize("fn", RULES)
def test_derivative_rule_matches_autograd(fn):
    from einattn.backends.torch.evaluator import Evaluator, Frame
    x = torch.linspace(0.1, 3.0, 13, dtype=torch.float64) * (torch.arange(13) % 2 * 2 - 1)
    if fn in ("log", "log2", "sqrt", "rsqrt"):
        x = x.abs()
    e = Expr(Op(fn), (X,))
    frame = Frame({"i": (0, 13)}, {"X": (x, ("i",))}, {}, {}, torch.float64)
    got = Evaluator(frame, ("i",))(derivative(e, X)).expand(13)
    xs = x.clone().requires_grad_()
    want = torch.autograd.grad(Evaluator(Frame({"i": (0, 13)}, {"X": (xs, ("i",))}, {}, {}, torch.float64),
                                         ("i",))(e).sum(), xs)[0]
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), fn


@pytest.mark.parametrize("text", ["X[i] / (X[i] + 2.0)", "max(X[i], 1.0) * min(X[i], 0.5)",
                                  "where(X[i] > 0.0, X[i] * X[i], -X[i])", "(X[i] + 4.0) ** 1.5",
                                  "X[i] % 0.7 + X[i] // 0.3", "2.0 ** X[i]"])
def test_derivative_of_expressions(text):
    from einattn.backends.torch.evaluator import Evaluator, Frame
    e = einattn.load_spec(f"einattn: 1\nname: t\nkey_index: i\ninputs: {{X: [i]}}\n"
                          f"cascade:\n  - Y[i] = {text}\noutputs: [Y]\n").stmts[0].expr
    x = torch.linspace(-2.1, 2.3, 17, dtype=torch.float64)
    ev = lambda t: Evaluator(Frame({"i": (0, 17)}, {"X": (t, ("i",))}, {}, {}, torch.float64), ("i",))  # noqa: E731
    got = ev(x)(derivative(e, X)).expand(17)
    xs = x.clone().requires_grad_()
    want = torch.autograd.grad(ev(xs)(e).sum(), xs)[0]
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), text
