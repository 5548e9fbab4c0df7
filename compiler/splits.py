"""Splitting the key loop into parallel parts (``KV_SPLITS``) and merging their state.

With ``KV_SPLITS = S`` a kernel streams the keys of one row block in S parts at
once: part s visits its own range of key tiles and leaves the per-row state of
the pass (``KernelPass.state``: row reductions, accumulators, running rows) as it
stands after its last tile. A merge step then combines the S states of a row
into the state one unsplit loop would have reached, and the pass's epilogue and
the stores run once on the merged state. This is what lets short-query shapes
(decoding: a few query rows, thousands of keys) keep every core or SM busy.

The merge is exact because every state the kernel plan carries is mergeable:
- a ``max=`` / ``min=`` row reduction: the max / min of the parts;
- a sum (``=`` row reduction, ``ValueOp`` accumulator) without rescale: the sum;
- a sum rescaled online by stabilisers ``m`` (``base(m_old - m)`` after each
  tile): each part's sum times ``base(m_part - m)`` for each of its stabilisers,
  with ``m`` the merged stabiliser, summed over the parts (the same correction
  the tile loop applies, so it follows the same rules at infinities);
- a ``RunningOp`` (a key-free row statement over running values): recomputed
  from the merged values.
Every backend renders the merge from :func:`merges`; :func:`split_refusal` says
when a plan cannot be split, which the config checks turn into an error.
"""
from __future__ import annotations

from dataclasses import dataclass

from einattn.ir import Expr, Reduce

from .kernel_plan import Kind, KernelPlan, Rescale


@dataclass(frozen=True, slots=True)
class Merge:
    """How the parts' values of one per-row state combine.

    ``how``: ``"max"``, ``"min"``, ``"sum"`` (times ``rescale``'s factors
    ``base(part - merged)`` of each stabiliser) or ``"recompute"`` (evaluate ``expr``
    on the merged values)."""
    name: str
    dims: tuple[str, ...]
    how: str
    rescale: Rescale = ()
    expr: Expr | None = None


def split_refusal(kp: KernelPlan) -> str | None:
    """Why the plan's key loop cannot be split into parallel parts, or None when it can."""
    if kp.tile_lists:
        return (f"the key loop of '{kp.cascade.name}' visits host-made lists of key tiles (block-sparse); "
                f"splitting a list into parts is not built yet (KV_SPLITS=1)")
    if len(kp.passes) != 1:
        return (f"the plan of '{kp.cascade.name}' makes {len(kp.passes)} passes over the keys; a later pass "
                f"reads state that every key must finish first, so its parts could not run side by side "
                f"(KV_SPLITS > 1 needs a one-pass plan; see `einattn explain` for why it needs "
                f"{len(kp.passes)})")
    return None


def merges(kp: KernelPlan) -> tuple[Merge, ...]:
    """The merge of each per-row state of the (one) pass, in loop order."""
    if (why := split_refusal(kp)) is not None:
        raise ValueError(why)
    out = []
    for op in kp.passes[0].state:
        if op.kind is Kind.RUNNING:
            out.append(Merge(op.name, op.dims, "recompute", expr=op.expr))
        elif op.kind is Kind.ROW_REDUCE and op.reduce is not Reduce.SUM:
            assert not op.rescale, "a rescaled max/min is not a plan the rewrites make"
            out.append(Merge(op.name, op.dims, "max" if op.reduce is Reduce.MAX else "min"))
        else:
            out.append(Merge(op.name, op.dims, "sum", rescale=op.rescale))
    return tuple(out)
