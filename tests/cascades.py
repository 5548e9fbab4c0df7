"""Random valid, attention-shaped cascades and inputs (hypothesis strategies).

A drawn case is a spec's YAML text, the sizes and the inputs to call it with.
Each spec has a score from one or two contractions (``Q . K * scale``, written
plainly, negated, with scattered scalar factors; GQA reads ``K[b, h // q, n, d]``;
a second, low-rank contraction ``Qb . Kb`` over ``r`` in a statement of its own
or in the same one) and then, drawn from the whole class the kernels claim to
compile:

- score modifiers: per-head, per-row, per-key and per-(row, key) input tensors
  (added, multiplied, divided by), ALiBi distances, softcapping, negation and
  offsets, every unary function of the expression whitelist, a gate read along
  both the query and the key index of one input (``C[b,h,m] - C[b,h,n]``), query
  and key norms computed in the cascade (cosine attention);
- an affine mask (causal, windows, prefix, offsets, combined with ``&``, ``|``,
  ``~``) applied the softmax way (``-inf`` before the max) or the gated way
  (``0`` after the nonlinearity);
- a normaliser: softmax-like (max, exp or exp2, sum; with a sink or an lse
  output), sigmoid / relu / softplus / squared relu with or without a sum, or a
  mean-centred relu that needs a second pass over the keys;
- value forms: ``P * V``, a value read inside ``where`` (``P * where(mask, V, 0)``),
  two value reads summed (``P * (V + V2)``);
- an epilogue (gate, scale, the output over its own norm, several outputs, a second
  output over another value tensor of its own width ``f``).

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
    "C": ("b", "h", "t"), "Qb": ("b", "h", "m", "r"), "Kb": ("b", "h", "n", "r"),
    "V2": ("b", "h", "n", "e"), "Vw": ("b", "h", "n", "f"), "G": ("b", "h", "m", "e"),
}
# every unary function of the whitelist, on arguments where it is defined
UNARY = ["exp(-abs({S}))", "exp2(-abs({S}))", "log(1 + abs({S}))", "log2(2 + {S} * {S})", "sqrt(abs({S}))",
         "rsqrt(1 + abs({S}))", "tanh({S})", "sigmoid({S})", "relu({S})", "softplus({S})", "abs({S})",
         "sign({S}) * {S}", "square({S}) * 0.1", "{S} ** 2 * 0.1", "{S} // 1", "{S} % 2.0",
         "min({S}, max(-{S}, 0.5))"]

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
    ("{S} * rsqrt(Qn[b,h,m] + 1)", ("Qn",)),                 # ... computed in the cascade
    ("{S} * rsqrt(Kn[b,h,n] + 1)", ("Kn",)),                 # a per-key norm computed in the cascade
    ("{S} + C[b,h,m] - C[b,h,n]", ("C",)),                   # a gate read along both indices (FoX)
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
    gqa = r.random() < 0.25
    k_read, v_read = ("K[b,h//q,n,d]", "V[b,h//q,n,e]") if gqa else ("K[b,h,n,d]", "V[b,h,n,e]")
    qk = r.choice([f"Q[b,h,m,d] * {k_read} * scale", f"-Q[b,h,m,d] * {k_read} * scale",
                   f"(Q[b,h,m,d] * 2.0) * ({k_read} * scale) * 0.5", f"Q[b,h,m,d] * {k_read} / sqrt_d",
                   f"Q[b,h,m,d] * {k_read} * scale - 0"])
    used: set[str] = set()
    low_rank = r.choice([None, None, "statement", "same"])
    if low_rank == "same":     # one statement: sums over d and r of the whole side (docs/spec.md)
        lines = [f"  - S0[b,h,m,n] = {qk} + Qb[b,h,m,r] * Kb[b,h,n,r]"]
        used.update(("Qb", "Kb"))
    else:
        lines = [f"  - S0[b,h,m,n] = {qk}"]
    if low_rank == "statement":
        lines.append("  - Sb[b,h,m,n] = Qb[b,h,m,r] * Kb[b,h,n,r]")
        lines.append("  - Sr[b,h,m,n] = S0[b,h,m,n] + Sb[b,h,m,n] * 0.5")
        used.update(("Qb", "Kb"))
        s = "Sr[b,h,m,n]"
    else:
        s = "S0[b,h,m,n]"
    for j in range(r.randint(0, 3)):
        if r.random() < 0.3:
            text, needs = r.choice(UNARY), ()
        else:
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
    if "Kn" in used:                             # ... and one per key
        used.discard("Kn")
        lines.insert(0, f"  - Kn[b,h,n] = {k_read} * {k_read}")
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
        lines.append(f"  - O[b,h,m,e] = P[b,h,m,n] * {value(r, v_read, mask, used)} / L[b,h,m]")
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
        lines.append(f"  - O[b,h,m,e] = P[b,h,m,n] * {value(r, v_read, mask, used)} / (L[b,h,m] + 1.0e-6)")
    else:
        f = {"sigmoid": "sigmoid({})", "relu": "relu({})", "softplus": "softplus({})",
             "relu2": "square(relu({}))"}[norm].format(s)
        lines.append(f"  - P[b,h,m,n] = where({mask}, {f}, 0.0)" if mask else f"  - P[b,h,m,n] = {f}")
        if r.random() < 0.5:
            lines.append("  - L[b,h,m] = P[b,h,m,n]")
            lines.append(f"  - O[b,h,m,e] = P[b,h,m,n] * {value(r, v_read, mask, used)} / L[b,h,m]")
        else:
            lines.append(f"  - O[b,h,m,e] = P[b,h,m,n] * {value(r, v_read, mask, used)} * inv_n")
    epi = r.choice(["none", "gate", "scale", "two", "wide", "norm"])
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
    elif epi == "norm":                          # the output over its own norm (after the key loop)
        lines.append("  - Z[b,h,m] = O[b,h,m,e] * O[b,h,m,e]")
        lines.append("  - Onorm[b,h,m,e] = O[b,h,m,e] * rsqrt(Z[b,h,m] + 1.0e-6)")
        outputs[0] = "Onorm"
    elif epi == "wide":                          # a second value tensor of another width
        lines.append("  - Ow[b,h,m,f] = P[b,h,m,n] * Vw[b,h,n,f] * inv_n")
        outputs.append("Ow")
        used.add("Vw")
    kv = ("b", "g", "n") if gqa else ("b", "h", "n")
    inputs = {"Q": ("b", "h", "m", "d"), "K": (*kv, "d"), "V": (*kv, "e")}
    for x in sorted(used):
        inputs[x] = EXTRA[x] if x not in ("V2",) or not gqa else (*kv, "e")
    params = "  scale: 1 / sqrt(d)\n  sqrt_d: sqrt(d)\n  c: 5.0\n  W: 7\n  Pf: 5\n  inv_n: 1 / n\n"
    if gqa:
        params += "  q: h // g\n"
    text = "einattn: 1\nname: random\ninputs:\n" + "".join(f"  {k}: [{', '.join(v)}]\n" for k, v in inputs.items())
    text += "params:\n" + params + "cascade:\n" + "\n".join(lines) + f"\noutputs: [{', '.join(outputs)}]\n"
    return text


def value(r: random.Random, v_read: str, mask: str | None, used: set) -> str:
    """The value factor of the contraction: V, V inside where, or two value reads summed."""
    form = r.choice(["plain", "plain", "where", "sum"])
    if form == "where":
        return f"where({mask or 'n <= m + 2'}, {v_read}, 0.0)"
    if form == "sum":
        used.add("V2")
        return f"({v_read} + {v_read.replace('V[', 'V2[')} * 0.5)"
    return v_read


SPECIAL = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-40]


def random_case(seed: int, *, extreme: bool = True):
    """(spec text, sizes, float32 inputs, what was poked) from one seed."""
    from einattn import load_spec
    r = random.Random(seed)
    text = random_spec(r)
    spec = load_spec(text)
    sizes = {"b": 1, "h": 2, "m": r.randint(1, 40), "n": r.randint(1, 40), "d": 16, "e": r.choice([8, 16]),
             "r": 4, "f": r.choice([4, 8]), "g": r.choice([1, 2])}
    if "C[b,h,n]" in text:                       # read along m and n: equal lengths
        sizes["n"] = sizes["m"]
    sizes["t"] = sizes["m"]
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


def survey(count: int, targets=("streaming", "cpu", "cuda"), start: int = 0) -> dict:
    """Compile and run ``count`` cases (seeds ``start``...) on each target: per target, how many
    ran and agreed with the reference, and each refusal's reason (without its file:line)."""
    import collections
    import warnings

    import einattn
    from einattn.ir import UnsupportedError
    from tests.helpers import agree, reference_outputs
    out = {t: collections.Counter() for t in targets}
    for seed in range(start, start + count):
        text, sizes, x, poked = random_case(seed)
        c = einattn.load_spec(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want64 = reference_outputs(c, {k: v.double() for k, v in x.items()})
            want32 = reference_outputs(c, x, dtype=torch.float32)
        want64, want32 = (tuple(w[o] for o in c.outputs) for w in (want64, want32))
        for t in targets:
            opts = {"interpret": True, "config": {"BLOCK_M": 16, "BLOCK_N": 16}} if t == "cuda" else {}
            try:
                got = einattn.compile(text, target=t, **opts)(**x)
            except UnsupportedError as e:
                out[t]["refused: " + str(e).split(": ", 1)[-1].split(";")[0][:110]] += 1
                continue
            try:
                agree(got, want64, want32, want32, f"seed {seed}")
                out[t]["ran and agreed"] += 1
            except AssertionError as e:
                out[t][f"WRONG (seed {seed}): {str(e)[:80]}"] += 1
    return out


if __name__ == "__main__":     # python -m tests.cascades 1000: the share each target compiles
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for target, counts in survey(n).items():
        print(f"{target}: {counts['ran and agreed']}/{n} ran and agreed with the reference")
        for why, k in counts.most_common():
            if why != "ran and agreed":
                print(f"  {k:5d}  {why}")
