"""The readable report behind ``einattn explain``."""
from __future__ import annotations

from .passes import Role

_WHY = {
    "fold_identities": "folded x * 1, x + 0, x - 0, negations into products",
    "split_score_sum": "one score statement per term of a sum of products",
    "name_value_operands": "gave a value operand of inputs (V1 + V2, where(n < p, V, 0)) a statement of its own",
    "pull_value_reads": "moved value reads out of where(c, V, 0): where(c, 1, 0) * V",
    "split_value_sum": "one value statement per term of a sum",
    "gather_scalars": "gathered the scalar factors of contractions after the tensor factors",
    "hoist_score_factors": "moved per-row / per-key factors of a score contraction to a statement of their own",
    "prune_unused": "dropped statements no output depends on",
    "defer_normalization": "moved key-independent divisors/factors out of sums over the keys",
    "online_rescaling": "running max + rescaled running sums (FlashAttention form)",
}


def render_plan(plan) -> str:
    c0, c = plan.original, plan.cascade
    key = c.key
    out = [f"{c0.name}: {c0.doc}" if c0.doc else c0.name,
           f"structural hash {c0.structural_hash()}", "",
           "cascade as written:"]
    out += [f"  {s}" for s in c0.stmts]
    out.append(f"outputs: {', '.join(c0.outputs)}")
    out += ["", f"passes over '{key}' as written: {plan.naive_passes}"]
    out += [f"  {line}" for line in plan.naive_chain]
    if not plan.rewrites:
        out += ["", "rewrites: none applied"]
    for name, stage in plan.stages:
        from .passes import count_passes
        out += ["", f"rewrite {name} ({_WHY.get(name, '')}) -> {count_passes(stage)} pass(es):"]
        out += [f"  {s}" for s in stage.stmts]
    out += ["", f"plan: {plan.passes} pass(es) over '{key}'  "
                f"({plan.naive_passes} -> {plan.passes}: {' -> '.join(plan.rewrites) or 'no rewrite'})"]
    if plan.prologue:
        out.append("  before the key loop: " + ", ".join(s.name for s in plan.prologue))
    for p in plan.schedule:
        out.append(f"  pass {p.index}, per key tile:")
        for st in p.loop:
            s = c.stmt(st.name)
            tag = {Role.TILE: "tile   ", Role.REDUCE: "reduce ", Role.RUNNING_ROW: "running"}[st.role]
            extra = "  [recomputed]" if st.recomputed else ""
            out.append(f"    {tag} {s}{extra}")
        if p.epilogue:
            out.append(f"  after pass {p.index}:")
            out += [f"    row     {c.stmt(st.name)}" for st in p.epilogue]
        state = plan.state[p.index]
        if state:
            out.append(f"  state carried across key tiles: {', '.join(state)} (O(rows), never [M, N])")
    from .linear import NotLinear, linear_form
    try:
        out += ["", linear_form(c0).describe()]
    except NotLinear as e:
        out += ["", f"linear: no (planned quadratically): {e}"]
    return "\n".join(out)
