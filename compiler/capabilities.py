"""What a backend can compile, as data, and the one legality check of a kernel plan.

Each backend declares a :class:`Capabilities` record (a class attribute
``capabilities``) and calls :func:`check_capabilities` in ``prepare``, before it
renders anything, so every refusal of a construct the kernel plan can describe
reads the same on every backend: the statement's file:line:column, the construct,
the backend, the reason and the fix. Refusals of constructs the plan itself cannot
describe (a score that is not one dot product, a value contraction without one
[.., n, e] read) stay in ``make_kernel_plan``.

>>> from einattn.compiler import make_plan, make_kernel_plan
>>> from einattn.specs import load_spec
>>> check_capabilities(make_kernel_plan(make_plan(load_spec("softmax"))), Capabilities(), "cpu")
"""
from __future__ import annotations

from dataclasses import dataclass

from einattn.ir import Op, Reduce, UnsupportedError

from .kernel_plan import Kind, KernelPlan

ROLES = ("grid", "query", "key", "contract", "value")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one backend's kernels can do.

    Attributes:
        max_value_indices: distinct value indices (widths of the accumulators, e.g. e) per kernel.
        key_reductions: reductions a per-row statement may take over the keys.
        row_reductions: a per-row statement after the key loop may reduce over one value index
            of a row value into a value per row (an output's norm). Statistics of inputs alone
            are computed before the kernel (``compiler/statistics.py``) on every backend.
        outputs_need_query: every output carries the query index (one row of the query tile each).
        output_roles: index roles an output may carry.
        row_feature_roles: roles of the feature indices of a per-row value besides grid and query.
        max_row_features: feature indices of one per-row statement (prologue, epilogue).
    """
    max_value_indices: int = 1
    key_reductions: frozenset = frozenset(Reduce)
    row_reductions: bool = False
    outputs_need_query: bool = True
    output_roles: frozenset = frozenset({"grid", "query", "value"})
    row_feature_roles: frozenset = frozenset({"value"})
    max_row_features: int = 1


def _where(kp: KernelPlan, name: str) -> str:
    s = kp.cascade.stmt(name)
    return f"{s.loc}: " if s is not None and s.loc is not None else f"{kp.cascade.name}: "


def _refuse(kp: KernelPlan, name: str, construct: str, backend: str, why: str, fix: str) -> UnsupportedError:
    s = kp.cascade.stmt(name)
    return UnsupportedError(f"{_where(kp, name)}{construct} '{s if s is not None else name}' is not supported "
                            f"by the {backend} backend: {why}; {fix}")


def check_capabilities(kp: KernelPlan, caps: Capabilities, backend: str) -> None:
    """Raise :class:`UnsupportedError` for the first construct of ``kp`` that ``caps`` rules out.

    Args:
        kp: the kernel plan.
        caps: the backend's capabilities.
        backend: the name the message gives the backend (``cpu``, ``cuda``, ``rocm``).
    """
    rows = list(kp.prologue) + [op for p in kp.passes for op in p.epilogue]
    for op in rows:
        if op.reduced and kp.query in op.reduced:
            raise _refuse(kp, op.name, "per-row statement", backend,
                          f"it sums over {', '.join(op.reduced)}, including the query index '{kp.query}' "
                          f"(each program computes its own query rows)",
                          "reduce the per-row output in PyTorch, or use target='streaming'")
        fits = len(op.reduced) == 1 and op.reduced[0] in kp.value and set(op.dims) <= kp.rowdims
        if op.reduced and not (caps.row_reductions and fits):
            # statistics of inputs alone run before the kernel (compiler/statistics.py): this
            # one reduces a value of the kernel (after the key loop, such as an output's norm)
            why = (f"it reduces over {', '.join(op.reduced)} into [{', '.join(op.dims)}]; after the key loop "
                   f"the kernels reduce one value index of a row value into one value per row"
                   if caps.row_reductions else
                   f"it sums over {', '.join(op.reduced)} a value the kernel computes (a statistic after "
                   f"the key loop), which this backend does not compute")
            raise _refuse(kp, op.name, "per-row statement", backend, why,
                          "output the value and reduce it in PyTorch, or use target='streaming'")
    for op in kp.scores:
        for side, e in (("query", op.query_read), ("key", op.key_read)):
            name = e.arg[0] if e.op is Op.READ else None
            if name is not None and kp.cascade.input(name) is None:
                # found by the zoo's linear_elu (phi(Q) . phi(K)): the renderers read score operands
                # from the inputs, and rendered a read of an undefined input buffer
                raise _refuse(kp, op.name, "score contraction", backend,
                              f"its {side}-side operand {e} is computed by a statement; the kernels read both "
                              f"operands of a score contraction from inputs",
                              f"apply the feature map to the {side} tensor in PyTorch before the call, or use "
                              f"target='streaming' (a linear cascade also runs as a scan: see docs/linear.md)")
    for p in kp.passes:
        for op in p.loop:
            if op.kind is Kind.ROW_REDUCE and op.reduce not in caps.key_reductions:
                allowed = ", ".join(sorted(r.name.lower() for r in caps.key_reductions))
                raise _refuse(kp, op.name, f"{op.reduce.name.lower()} over the keys", backend,
                              f"it reduces the keys with {allowed} only", "rewrite the reduction as one of those")
    if len(kp.value) > caps.max_value_indices:
        seen: dict[str, str] = {}
        for p in kp.passes:
            for op in p.loop:
                if op.kind is Kind.VALUE:
                    seen.setdefault(op.value_index, op.name)
        extra = list(seen.items())[caps.max_value_indices]
        raise _refuse(kp, extra[1], "value contraction", backend,
                      f"it carries the value index '{extra[0]}' while the kernel already accumulates over "
                      f"{', '.join(repr(v) for v in list(seen)[:caps.max_value_indices])}; the kernel holds "
                      f"{caps.max_value_indices} value width(s) (found {', '.join(kp.value)})",
                      "compute the outputs of each value tensor with a separate spec, or use target='streaming'")
    for o, dims in kp.outputs:
        if caps.outputs_need_query and kp.query not in dims:
            raise _refuse(kp, o, "output", backend, f"it must carry the query index '{kp.query}' (one row of "
                          f"the query tile per program)", "compute it from a per-row output in PyTorch")
        bad = [i for i in dims if kp.roles.get(i) not in caps.output_roles]
        if bad:
            allowed = ", ".join(i for i, r in kp.roles.items() if r in caps.output_roles)
            raise _refuse(kp, o, "output", backend, f"it carries {', '.join(bad)} "
                          f"({', '.join(kp.roles.get(i, 'no role') for i in bad)}); an output may carry only "
                          f"{allowed}", "make it per row ([.., "
                          f"{kp.query}] or [.., {kp.query}, {', '.join(kp.value) or 'e'}])")
    for op in rows:
        feat = [i for i in op.dims if i not in kp.rowdims]
        bad = [i for i in feat if kp.roles.get(i) not in caps.row_feature_roles]
        if bad:
            raise _refuse(kp, op.name, "per-row statement", backend,
                          f"it carries {', '.join(bad)} ({', '.join(kp.roles.get(i, 'no role') for i in bad)}); "
                          f"a per-row value may carry only {' or '.join(sorted(caps.row_feature_roles))} "
                          f"indices besides the grid and the query",
                          "fold it into the statement that reads it, or use target='streaming'")
        if len(feat) > caps.max_row_features:
            raise _refuse(kp, op.name, "per-row statement", backend,
                          f"it has several feature indices {feat}; a per-row value may have "
                          f"{caps.max_row_features}", "split it, or use target='streaming'")
