"""Random valid, attention-shaped cascades and inputs (hypothesis strategies).

A drawn case is a spec's YAML text, the sizes and the inputs to call it with.
Each spec has one score contraction ``S = Q . K * scale`` and then, drawn from
the whole class the kernels claim to compile:

- score modifiers: per-head, per-row, per-key and per-(row, key) input tensors
  (added, multiplied, divided by), ALiBi distances, softcapping, negation and
  offsets, unary functions of the expression whitelist;
- an affine mask (causal, windows, prefix, offsets, combined with ``&``, ``|``,
  ``~``) applied the softmax way (``-inf`` before the max) or the gated way
  (``0`` after the nonlinearity);
- a normaliser: softmax-like (max, exp or exp2, sum; with a sink or an lse
  output), sigmoid / relu / softplus / squared relu with or without a sum, or a
  mean-centred relu that needs a second pass over the keys;
- an epilogue (gate, scale, several outputs).

Inputs are ``randn * scale`` and may hold one extreme value (NaN, +-inf, 1e30,
1e-40) or rows that a ``-inf`` bias masks entirely. Structure choices come from a
``random.Random`` seeded by hypothesis (uniform coverage; a failing seed is printed
and replays with ``random_case(seed)``); ``tests/test_random_cascades.py`` runs every
target on them.
"""
from __future__ import annotations

import math
import random

import torch
from hypothesis import strategies as st

EXTRA = {  # name -> indices of an extra input tensor a modifier may read
    "hb": ("h",), "qb": ("b", "h", "m"), "kb": ("b", "h", "n"), "B": ("b", "h", "m", "n"),
}

MODIFIERS = [  # (text with {S}, extra inputs it reads)
    ("{S} + kb[b,h,n]", ("kb",)),
    ("{S} + qb[b,h,m]", ("qb",)),
    ("{S} + B[b,h,m,n]", ("B",)),
    ("{S} * hb[h]", ("hb",)),
    ("{S} / (1 + abs(hb[h]))", ("hb",)),
    ("{S} - abs(hb[h]) * abs(m - n)", ("hb",)),       # ALiBi
    ("c * tanh({S} / c)", ()),                          # softcap
    ("-{S}", ()),
    ("{S} - 0", ()),
    ("{S} * 2.5", ()),
    ("{S} + sigmoid(kb[b,h,n])", ("kb",)),
    ("{S} + softplus(qb[b,h,m]) - 1", ("qb",)),
    ("where({S} > 0, {S}, {S} * 0.5)", ()),
    ("min({S}, 3.0)", ()),
    ("max({S}, -3.0)", ()),
    ("{S} + square(kb[b,h,n]) * 0.1", ("kb",)),
    ("{S} * rsqrt(1 + square(qb[b,h,m]))", ("qb",)),       # a per-row norm given as an input
    ("{S} * rsqrt(Qn[b,h,m] + 1)", ("Qn",)),                 # ... computed in the cascade (a refusal)
]

ATOMS = ["n <= m", "n < m", "n >= m - W", "n > m - W", "n < Pf", "n <= m + 2", "m - n < W", "n != m",
         "n >= Pf", "m >= 3"]


def random_mask(r: random.Random) -> str | None:
    if r.random() < 0.4:
        return None
    a = r.choice(ATOMS)
    for _ in range(r.randint(0, 2)):
        b = r.choice(ATOMS)
        if r.random() < 0.2:
            b = f"~({b})"
        a = f"({a}) {r.choice(['&', '|'])} ({b})"
    return a


def random_spec(r: random.Random) -> str:
    """The YAML text of one random attention-shaped cascade."""
    lines = ["  - S0[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d] * scale"]
    used: set[str] = set()
    s = "S0[b,h,m,n]"
    for j in range(r.randint(0, 3)):
        text, needs = r.choice(MODIFIERS)
        used.update(needs)
        if r.random() < 0.5:                     # inline, or as a statement of its own
            s = "(" + text.format(S=s) + ")"
        else:
            lines.append(f"  - S{j + 1}[b,h,m,n] = {text.format(S=s)}")
            s = f"S{j + 1}[b,h,m,n]"
    if "Qn" in used:                             # a statistic over d before the key loop
        used.discard("Qn")
        lines.insert(0, "  - Qn[b,h,m] = Q[b,h,m,d] * Q[b,h,m,d]")
    mask = random_mask(r)
    norm = r.choice(["softmax", "softmax2", "sink", "lse", "sigmoid", "relu", "softplus", "relu2", "centered"])
    outputs = ["O"]
    if norm in ("softmax", "softmax2", "sink", "lse"):
        e = "exp" if norm != "softmax2" else "exp2"
        sm = f"where({mask}, {s}, -inf)" if mask else s
        lines.append(f"  - Sm[b,h,m,n] = {sm}")
        lines.append("  - M0[b,h,m] max= Sm[b,h,m,n]")
        if norm == "sink":
            used.add("hb")
            lines.append("  - M[b,h,m] = max(M0[b,h,m], hb[h])")
        else:
            lines.append("  - M[b,h,m] = M0[b,h,m]")
        lines.append(f"  - P[b,h,m,n] = {e}(Sm[b,h,m,n] - M[b,h,m])")
        lines.append("  - L0[b,h,m] = P[b,h,m,n]")
        lines.append("  - L[b,h,m] = L0[b,h,m] + exp(hb[h] - M[b,h,m])" if norm == "sink"
                     else "  - L[b,h,m] = L0[b,h,m]")
        lines.append("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]")
        if norm == "lse":
            lines.append("  - lse[b,h,m] = M[b,h,m] + log(L[b,h,m])")
            outputs.append("lse")
    elif norm == "centered":
        sv = f"where({mask}, {s}, 0.0)" if mask else s
        lines.append(f"  - Sc[b,h,m,n] = {sv}")
        lines.append("  - Mu[b,h,m] = Sc[b,h,m,n] * inv_n")
        p = "relu(Sc[b,h,m,n] - Mu[b,h,m])"
        lines.append(f"  - P[b,h,m,n] = where({mask}, {p}, 0.0)" if mask else f"  - P[b,h,m,n] = {p}")
        lines.append("  - L[b,h,m] = P[b,h,m,n]")
        lines.append("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / (L[b,h,m] + 1.0e-6)")
    else:
        f = {"sigmoid": "sigmoid({})", "relu": "relu({})", "softplus": "softplus({})",
             "relu2": "square(relu({}))"}[norm].format(s)
        lines.append(f"  - P[b,h,m,n] = where({mask}, {f}, 0.0)" if mask else f"  - P[b,h,m,n] = {f}")
        if r.random() < 0.5:
            lines.append("  - L[b,h,m] = P[b,h,m,n]")
            lines.append("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] / L[b,h,m]")
        else:
            lines.append("  - O[b,h,m,e] = P[b,h,m,n] * V[b,h,n,e] * inv_n")
    epi = r.choice(["none", "gate", "scale", "two"])
    if epi == "gate":
        lines.append("  - Og[b,h,m,e] = O[b,h,m,e] * sigmoid(G[b,h,m,e])")
        outputs[0] = "Og"
        used.add("G")
    elif epi == "scale":
        lines.append("  - Os[b,h,m,e] = O[b,h,m,e] * 2.0 - 0.5")
        outputs[0] = "Os"
    elif epi == "two":
        lines.append("  - O2[b,h,m,e] = O[b,h,m,e] * O[b,h,m,e]")
        outputs.append("O2")
    inputs = {"Q": ("b", "h", "m", "d"), "K": ("b", "h", "n", "d"), "V": ("b", "h", "n", "e")}
    for x in sorted(used):
        inputs[x] = EXTRA.get(x, ("b", "h", "m", "e"))
    text = "einattn: 1\nname: random\ninputs:\n" + "".join(f"  {k}: [{', '.join(v)}]\n" for k, v in inputs.items())
    text += ("params:\n  scale: 1 / sqrt(d)\n  c: 5.0\n  W: 7\n  Pf: 5\n  inv_n: 1 / n\ncascade:\n"
             + "\n".join(lines) + f"\noutputs: [{', '.join(outputs)}]\n")
    return text


SPECIAL = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-40]


def random_case(seed: int, *, extreme: bool = True):
    """(spec text, sizes, float32 inputs, what was poked) from one seed."""
    from einattn import load_spec
    r = random.Random(seed)
    text = random_spec(r)
    spec = load_spec(text)
    sizes = {"b": 1, "h": 2, "m": r.randint(1, 40), "n": r.randint(1, 40), "d": 16, "e": r.choice([8, 16])}
    g = torch.Generator().manual_seed(seed)
    x = {t.name: torch.randn([sizes[i] for i in t.indices], generator=g) * 0.5 for t in spec.inputs}
    poked = "none"
    if extreme and r.random() < 0.4:
        name = r.choice(sorted(x))
        val = r.choice(SPECIAL)
        t = x[name].view(-1)
        t[r.randrange(t.numel())] = val
        poked = f"{name}={val}"
    if extreme and "B" in x and r.random() < 0.3:
        x["B"][..., r.randrange(sizes["m"]), :] = -math.inf     # a row that an input masks entirely
        poked += ", a B row = -inf"
    return text, sizes, x, poked


def case(part: int = 0, parts: int = 1):
    """Hypothesis strategy: a random case from a drawn seed (uniform over the structure choices;
    hypothesis alone draws the first alternatives far more often). ``part`` of ``parts`` draws
    from its own seed range, so test processes can share a sample."""
    span = 2 ** 32 // parts
    return st.integers(part * span, (part + 1) * span - 1).map(random_case)
