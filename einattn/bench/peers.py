"""The peers ``einattn bench`` measures against: SDPA, FlexAttention and eager PyTorch.

Each peer is built for one zoo variant from the bench's own inputs and params
(every param evaluated, ``scale`` included) and returns a ``Peer``: a callable
that takes no arguments and returns the variant's outputs (a tuple when the spec
has several), plus a note saying which form was used. A peer that cannot
express the variant is a ``Peer`` with ``fn=None`` and the reason: the bench
prints "n/a" rather than compare against something else.

Everything a user would build once per model (boolean or float masks, ALiBi
distance matrices, FlexAttention block masks, the ``torch.compile`` wrapper) is
built here, outside the timed call. Eager peers compute in the input dtype, the
plain way: materialise the [B, H, M, N] scores, mask, normalise, multiply.

``make_peers`` binds the peers to the spec being benched: ``zoo_name`` says
whether it is exactly a variant the peers know; a spec outside the zoo gets only
an eager peer, einattn's reference executor in the input dtype.

Example:
    >>> import torch
    >>> x = {n: torch.randn(1, 2, 8, 4) for n in "QKV"}
    >>> p = make_peer("eager", "softmax", x, {"scale": 0.5})
    >>> p.fn().shape
    torch.Size([1, 2, 8, 4])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
PEER_KINDS = ("sdpa", "flex", "eager")

# mask_mod(m, n, params) -> bool tensor, for the variants whose visibility is an index predicate.
MASKS: dict[str, Callable] = {
    "causal": lambda m, n, p: n <= m,
    "alibi": lambda m, n, p: n <= m,
    "relu": lambda m, n, p: n <= m,
    "causal_bottom_right": lambda m, n, p: n <= m + int(p["off"]),
    "sliding_window": lambda m, n, p: (n <= m) & (n > m - int(p["W"])),
    "prefix_lm": lambda m, n, p: (n <= m) | (n < int(p["P"])),
    "softcap_sliding_window": lambda m, n, p: (n <= m) & (n > m - int(p["W"])),
}

# Benchmark-only specs live in the source checkout, not in the installed package: without the
# checkout, extra_specs() is empty and such a spec is benched as a non-zoo spec (eager reference only).
SPECS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "specs"


def extra_specs() -> dict[str, Path]:
    """Benchmark-only specs (``benchmarks/specs/*.yaml`` of the source checkout) the peers know, by name."""
    return {p.stem: p for p in sorted(SPECS_DIR.glob("*.yaml"))}


@dataclass(frozen=True)
class Peer:
    """A peer implementation bound to its inputs; ``fn is None`` means n/a (``note`` says why)."""
    kind: str
    fn: Callable[[], Tensor | tuple[Tensor, ...]] | None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.fn is not None


def _na(kind: str, why: str) -> Peer:
    return Peer(kind, None, why)


def dense_mask(name: str, m: int, n: int, params: dict, device="cpu") -> Tensor | None:
    """The [M, N] visibility of a masked zoo variant (True = visible), or None if unmasked."""
    if name not in MASKS:
        return None
    return MASKS[name](torch.arange(m, device=device)[:, None], torch.arange(n, device=device)[None, :], params)


def make_peer(kind: str, name: str, x: dict[str, Tensor], params: dict) -> Peer:
    """Build peer ``kind`` ("sdpa", "flex", "eager") for zoo variant ``name``.

    Args:
        x: the bench's inputs by spec input name (already in the bench dtype).
        params: every spec param evaluated at the bench sizes (``scale`` included).
    """
    builders = {"sdpa": _sdpa, "flex": _flex, "eager": _eager}
    if kind not in builders:
        raise ValueError(f"unknown peer {kind!r}; expected one of {', '.join(PEER_KINDS)}")
    return builders[kind](name, x, params)


# ---------------------------------------------------------------------------
# eager PyTorch


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    return torch.matmul(q, k.transpose(-1, -2)) * scale


def _masked_softmax(s: Tensor, visible: Tensor | None, empty_rows: Tensor | None) -> Tensor:
    if visible is not None:
        s = s.masked_fill(~visible, -math.inf)
    p = torch.softmax(s, dim=-1)
    if empty_rows is not None:            # rows with no visible key: 0, not NaN
        p = p.masked_fill(empty_rows, 0.0)
    return p


def _eager(name: str, x: dict, p: dict) -> Peer:
    sc = p.get("scale")
    if name in ("differential",):
        q1, k1, q2, k2, v, lam = (x[k] for k in ("Q1", "K1", "Q2", "K2", "V", "lam"))
        lam4 = lam[:, None, None]

        def diff():
            a = torch.softmax(_scores(q1, k1, sc), -1) @ v
            b = torch.softmax(_scores(q2, k2, sc), -1) @ v
            return a - lam4 * b
        return Peer("eager", diff, "two softmax attentions, combined")
    q, k, v = x["Q"], x["K"], x["V"]
    m, n = q.shape[-2], k.shape[-2]
    vis = dense_mask(name, m, n, p, q.device)
    empty = None
    if vis is not None and not bool(vis.any(dim=-1).all()):
        empty = ~vis.any(dim=-1, keepdim=True)
    note = "plain torch ops on the materialised [B,H,M,N] scores"
    if vis is not None:
        note += ", bool mask [M,N] built outside the timing"

    if name in ("softmax", "causal", "causal_bottom_right", "sliding_window", "prefix_lm"):
        fn = lambda: _masked_softmax(_scores(q, k, sc), vis, empty) @ v
    elif name == "alibi":
        dist = (torch.arange(m, device=q.device)[:, None] - torch.arange(n, device=q.device)[None, :]).to(q.dtype)   # m - n
        slope = x["slope"][:, None, None]
        fn = lambda: _masked_softmax(_scores(q, k, sc) - slope * dist, vis, empty) @ v
    elif name in ("softcap", "softcap_sliding_window"):
        c = p["c"]
        fn = lambda: _masked_softmax(c * torch.tanh(_scores(q, k, sc) / c), vis, empty) @ v
    elif name == "bias":
        fn = lambda: torch.softmax(_scores(q, k, sc) + x["B"], -1) @ v
    elif name == "gqa":
        r = int(p["r"])
        note = "K, V repeat_interleave'd to H heads inside the timing; " + note
        fn = lambda: torch.softmax(_scores(q, k.repeat_interleave(r, 1), sc), -1) @ v.repeat_interleave(r, 1)
    elif name == "sinks":
        t = x["t"]
        note = "sink logit concatenated as an extra score column, softmax, column dropped"

        def fn():
            s = _scores(q, k, sc)
            sink = t.view(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
            return torch.softmax(torch.cat([s, sink], -1), -1)[..., :n] @ v
    elif name == "lse":
        def fn():
            s = _scores(q, k, sc)
            lse = torch.logsumexp(s, -1)
            return torch.exp(s - lse[..., None]) @ v, lse
    elif name == "sigmoid":
        fn = lambda: torch.sigmoid(_scores(q, k, sc) + p["beta"]) @ v
    elif name == "relu":
        count = vis.sum(-1, keepdim=True).clamp(min=1).to(q.dtype)
        fn = lambda: (torch.relu(_scores(q, k, sc)).masked_fill(~vis, 0.0) @ v) / count
    elif name == "softplus":
        def fn():
            w = F.softplus(_scores(q, k, sc) * p["ln_n"])
            return (w @ v) / w.sum(-1, keepdim=True)
    elif name == "gated":
        g = x["G"]
        fn = lambda: (torch.softmax(_scores(q, k, sc), -1) @ v) * torch.sigmoid(g)
    elif name == "signed":
        def fn():
            s = _scores(q, k, sc)
            a = s.abs()
            e = torch.exp(a - a.amax(-1, keepdim=True))
            return (torch.sign(s) * e / e.sum(-1, keepdim=True)) @ v
    elif name == "centered_relu":
        def fn():
            s = _scores(q, k, sc)
            w = torch.relu(s - s.sum(-1, keepdim=True) * p["inv_n"])
            return (w @ v) / (w.sum(-1, keepdim=True) + p["eps"])
    else:
        return _na("eager", f"no hand-written eager form for '{name}'")
    return Peer("eager", fn, note)


def _differential(impl: str, attend, x: dict, how: str) -> Peer:
    """Differential attention from two softmax attentions: o1 - lam[h] * o2."""
    q1, k1, q2, k2, v, lam = (x[k] for k in ("Q1", "K1", "Q2", "K2", "V", "lam"))
    lam4 = lam[:, None, None]
    return Peer(impl, lambda: attend(q1, k1, v) - lam4 * attend(q2, k2, v), f"{how}, combined outside (o1 - lam * o2)")


# ---------------------------------------------------------------------------
# torch.nn.functional.scaled_dot_product_attention


def _sdpa(name: str, x: dict, p: dict) -> Peer:
    sdpa = F.scaled_dot_product_attention
    sc = p.get("scale")
    if name == "differential":
        return _differential("sdpa", lambda q, k, v: sdpa(q, k, v, scale=sc), x, "two SDPA calls")
    if "Q" not in x:
        return _na("sdpa", "not expressible")
    q, k, v = x["Q"], x["K"], x["V"]
    m, n = q.shape[-2], k.shape[-2]
    if name == "softmax":
        return Peer("sdpa", lambda: sdpa(q, k, v, scale=sc), "no mask")
    if name == "causal" or (name == "causal_bottom_right" and m == n and int(p["off"]) == 0):
        return Peer("sdpa", lambda: sdpa(q, k, v, is_causal=True, scale=sc), "is_causal=True")
    if name in ("causal_bottom_right", "sliding_window", "prefix_lm"):
        mask = dense_mask(name, m, n, p, q.device)
        return Peer("sdpa", lambda: sdpa(q, k, v, attn_mask=mask, scale=sc),
                    "bool attn_mask [M,N], built outside the timing")
    if name == "alibi":
        dist = (torch.arange(m, device=q.device)[:, None] - torch.arange(n, device=q.device)[None, :]).to(q.dtype)
        hidden = ~dense_mask(name, m, n, p, q.device)

        def alibi_bias():
            return (-x["slope"][:, None, None] * dist).masked_fill(hidden, -math.inf).unsqueeze(0).contiguous()
        if x["slope"].requires_grad:        # a learned slope: the bias is rebuilt in every (timed) call
            return Peer("sdpa", lambda: sdpa(q, k, v, attn_mask=alibi_bias(), scale=sc),
                        "float attn_mask [1,H,M,N] (ALiBi bias) built in the call: slope requires grad")
        bias = alibi_bias()
        return Peer("sdpa", lambda: sdpa(q, k, v, attn_mask=bias, scale=sc),
                    "float attn_mask [1,H,M,N] (ALiBi bias, -inf above the diagonal), built outside the timing")
    if name == "bias":
        bias = x["B"].unsqueeze(0)
        return Peer("sdpa", lambda: sdpa(q, k, v, attn_mask=bias, scale=sc), "float attn_mask [1,H,M,N] = B")
    if name == "gqa":
        return Peer("sdpa", lambda: sdpa(q, k, v, enable_gqa=True, scale=sc), "enable_gqa=True")
    if name == "gated":
        g = x["G"]
        return Peer("sdpa", lambda: sdpa(q, k, v, scale=sc) * torch.sigmoid(g),
                    "SDPA, then the sigmoid gate multiplied outside")
    if name == "lse":
        return _na("sdpa", "SDPA does not return the log-sum-exp on CPU")
    return _na("sdpa", f"SDPA takes only a mask or an additive bias on softmax attention; '{name}' "
               f"is not expressible")


# ---------------------------------------------------------------------------
# FlexAttention under torch.compile

_FLEX = {}


def compiled_flex():
    """``torch.compile(flex_attention)``, made once per process (as users do)."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX["fn"] = torch.compile(flex_attention)
    return _FLEX["fn"]


def _flex(name: str, x: dict, p: dict) -> Peer:
    if name in ("lse", "sinks"):
        return _na("flex", "FlexAttention under torch.compile on CPU does not support return_lse"
                   + (" (needed for the sink term)" if name == "sinks" else ""))
    if name in ("sigmoid", "relu", "softplus", "signed", "centered_relu"):
        return _na("flex", f"FlexAttention always normalises with softmax; '{name}' is not expressible")
    from torch.nn.attention.flex_attention import create_block_mask
    fa = compiled_flex()
    sc = p.get("scale")
    if name == "differential":
        return _differential("flex", lambda q, k, v: fa(q, k, v, scale=sc), x,
                             "two compiled flex_attention calls")
    if name not in MASKS and name not in ("softmax", "softcap", "bias", "gqa", "gated"):
        return _na("flex", f"no FlexAttention form for '{name}'")
    q, k, v = x["Q"], x["K"], x["V"]
    m, n = q.shape[-2], k.shape[-2]
    block_mask, note = None, []
    if name in MASKS:
        pred = MASKS[name]
        block_mask = create_block_mask(lambda b, h, qi, ki: pred(qi, ki, p), B=None, H=None,
                                       Q_LEN=m, KV_LEN=n, device=str(q.device))
        note.append("block mask from create_block_mask")
    score_mod = None
    if name == "alibi":
        slope = x["slope"]
        score_mod = lambda s, b, h, qi, ki: s - slope[h] * (qi - ki)
        note.append("score_mod s - slope[h] * (m - n)")
    elif name in ("softcap", "softcap_sliding_window"):
        c = p["c"]
        score_mod = lambda s, b, h, qi, ki: c * torch.tanh(s / c)
        note.append("score_mod c * tanh(s / c)")
    elif name == "bias":
        bias = x["B"]
        score_mod = lambda s, b, h, qi, ki: s + bias[h, qi, ki]
        note.append("score_mod s + B[h, m, n]")
    kw = {"enable_gqa": True} if name == "gqa" else {}
    if name == "gqa":
        note.append("enable_gqa=True")
    fn = lambda: fa(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=sc, **kw)
    if name == "gated":
        g = x["G"]
        base = fn
        fn = lambda: base() * torch.sigmoid(g)
        note.append("sigmoid gate multiplied outside")
    return Peer("flex", fn, "torch.compile(flex_attention)" + (", " + ", ".join(note) if note else ""))


# ---------------------------------------------------------------------------
# Peers for the spec being benched


def zoo_name(spec) -> str | None:
    """The name of ``spec`` if it is exactly a zoo variant or one of benchmarks/specs/*.yaml
    (same canonical cascade): the variants the peers know. Else None."""
    import einattn
    known = {n: n for n in einattn.zoo_names()}
    known.update({n: str(p) for n, p in extra_specs().items()})
    if spec.name not in known:
        return None
    return spec.name if einattn.load_spec(known[spec.name]).canonical() == spec.canonical() else None


def peer_list(text: str) -> list[str]:
    """``--against`` text -> peer kinds ("none" or "" for none); an unknown kind is a SpecError."""
    from einattn.ir import Loc, SpecError
    names = [] if text.strip().lower() in ("", "none") else [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in PEER_KINDS]
    if bad:
        raise SpecError(f"unknown peer {bad[0]!r} in --against", loc=Loc("<command line>"),
                        expected="a comma-separated list of " + ", ".join(PEER_KINDS), found=text)
    return names


def make_peers(against: list[str], spec, x: dict, params: dict) -> list[dict]:
    """One entry per requested peer: {"name", "fn" or None, "note"}."""
    out = []
    name = zoo_name(spec)
    for kind in against:
        if name is None:
            if kind == "eager":
                out.append({"name": kind, "fn": _reference_eager(spec, x, params),
                            "note": "einattn's reference executor run in the input dtype (not a zoo variant)"})
            else:
                out.append({"name": kind, "fn": None, "note": "not a zoo variant: no known form"})
        else:
            try:
                p = make_peer(kind, name, x, params)
                out.append({"name": kind, "fn": p.fn, "note": p.note})
            except Exception as e:  # a peer that fails to build is reported, not fatal
                out.append({"name": kind, "fn": None, "note": f"failed to build: {type(e).__name__}: {e}"})
    return out


def _reference_eager(spec, x: dict, params: dict):
    from einattn.backends.torch.reference import run_reference
    from einattn.ir import bind_sizes
    sizes = bind_sizes(spec, {k: tuple(v.shape) for k, v in x.items()})
    dtype = next(iter(x.values())).dtype
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32

    def fn():
        out = run_reference(spec, x, sizes, params, dtype)
        res = tuple(out[o] for o in spec.outputs)
        return res[0] if len(res) == 1 else res
    return fn
