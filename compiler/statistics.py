"""Statistics computed before the kernel: reductions over inputs that no key tile needs to stream.

Cosine attention normalises by the norms of each query and each key,
``Qn[b,h,m] = Q[b,h,m,d] * Q[b,h,m,d]`` and ``Kn[b,h,n] = K[b,h,n,d] * K[b,h,n,d]``.
Such a statement reads inputs only and sums over a feature index, not over the
keys: inside a kernel it would be a reduction across the feature columns of every
query tile (prologue) and of every key tile in every pass. Computed once before
the kernel instead, each costs one read of the input (O(N·D) next to the
kernel's O(M·N·D)), and the kernel reads the result as one more input, per row or
per key, through the same paths as any other input.

``split_statistics`` picks them: a statement is computed before the kernel when
- it reduces, and not over the key index (a reduction over the keys is what the
  passes stream);
- it reads only inputs and earlier such statements;
- it is not a score: if it carries the key index, every index on its left comes
  from its reads that carry the key index too (``Kn[b,h,n]`` from ``K[b,h,n,d]``;
  a score ``S[b,h,m,n]`` has ``m`` from the query side);
- it is not an output (kernels write outputs row by row).

Also computed before the kernel: an elementwise statement of inputs along the keys that
carries an index beyond the query rows (a value operand, ``O_v[n,e] = V1 + V2 * 0.5``, named
by ``name_value_operands``): a key tile holds no such index, a value tensor does. It keeps
the dtype of its inputs (it is an operand of the P.V product); statistics are float32.
"""
from __future__ import annotations

from einattn.ir import Cascade, Op, Stmt, TensorDecl

from .normalize import _row_dims


def _is_statistic(s: Stmt, c: Cascade, ready: set[str], rows: set[str] | None) -> bool:
    if c.key in s.reduced or s.name in c.outputs:
        return False
    reads = [e for e in s.expr.walk() if e.op is Op.READ]
    if any(e.arg[0] not in ready for e in reads):
        return False
    if not s.reduced:           # a value operand (name_value_operands): along the keys, past the rows
        return bool(reads) and c.key in s.indices and rows is not None and bool(set(s.indices) - rows - {c.key})
    if c.key not in s.indices:
        return True
    keyside = {x.index for e in reads if any(x.index == c.key for x in e.arg[1]) for x in e.arg[1]}
    return set(s.indices) <= keyside


def keeps_input_dtype(s: Stmt) -> bool:
    """Whether a statement computed before the kernel takes its inputs' dtype (a value operand,
    an operand of the P.V product) rather than float32 (a statistic, a reduction)."""
    return not s.reduced


def split_statistics(c: Cascade) -> tuple[tuple[Stmt, ...], Cascade]:
    """(the statements computed before the kernel, the cascade the kernel computes, in which
    they are inputs appended after the declared ones)."""
    ready = {t.name for t in c.inputs}
    rows = _row_dims(c)
    pre = []
    for s in c.stmts:
        if _is_statistic(s, c, ready, rows):
            pre.append(s)
            ready.add(s.name)
    if not pre:
        return (), c
    names = {s.name for s in pre}
    inputs = c.inputs + tuple(TensorDecl(s.name, s.indices, s.loc) for s in pre)
    return tuple(pre), Cascade(inputs, c.params, tuple(s for s in c.stmts if s.name not in names), c.outputs,
                               c.key, c.name, c.doc, c.file)
