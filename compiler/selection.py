"""Block-sparse cascades (spec v1.1): split into a selection stage and an attention stage.

Stage A ("select") holds the selection statements, every statement read at key-block
granularity (``T[.., n // BS]``) and everything they depend on: block summaries, gate scores,
``topk`` / ``topp``. It runs on the host, over blocks, never over ``[m, n]``. Stage B
("attend") is the rest: a plain v1 cascade whose inputs are the spec's inputs plus the stage-A
tensors it reads, so every pass analysis, rewrite and backend applies to it unchanged. A mask
read ``Sel[b, h, m, n // BS] > 0`` in stage B names, per query unit, the key blocks that can
hold a visible key: the block lists (``backends/torch/selection.block_lists``) a key loop
visits instead of every key tile.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import networkx as nx

from einattn.ir import Cascade, Loc, Op, SpecError, TensorDecl, verify


@dataclass(frozen=True)
class KeyBlocks:
    """A stage-A tensor stage B reads along the key index at block granularity."""
    tensor: str
    dims: tuple[str, ...]           # as stage A defines it, e.g. (b, g, m, j)
    subs: tuple                     # as stage B reads it, e.g. (b, h // r, m, n // SB)
    block: str                      # the block dim read along the key (j)
    size: str                       # its block size param (SB)

    @property
    def per(self) -> str:
        """Which query unit one selection belongs to, in words."""
        q = [str(s) for s, d in zip(self.subs, self.dims) if d != self.block]
        grouped = [str(s) for s in self.subs if s.div is not None and s.index != self.subs[self.dims.index(self.block)].index]
        return f"per [{', '.join(q)}]" + (f" (shared: {', '.join(grouped)})" if grouped else "")

    def __str__(self) -> str:
        return f"{self.tensor}[{', '.join(map(str, self.subs))}] (key blocks of {self.size}, {self.per})"


@dataclass(frozen=True)
class Stages:
    original: Cascade
    select: Cascade                 # stage A; its outputs are what stage B reads
    attend: Cascade                 # stage B, a v1 cascade
    key_blocks: tuple[KeyBlocks, ...]

    @functools.cached_property
    def plan(self):
        """The pass plan of the attention stage (made once)."""
        from .plan import make_plan
        return make_plan(self.attend)

    def __str__(self) -> str:
        return self.describe() + "\nstage B pass plan:\n" + str(self.plan)

    def describe(self) -> str:
        a = self.select
        lines = [f"block-sparse cascade {self.original.name}: two stages (compiler/selection.py)",
                 f"stage A (select, on the host over blocks: {', '.join(map(str, self.original.blocks))}):"]
        lines += [f"  {s}" for s in a.stmts]
        lines.append(f"  -> {', '.join(a.outputs)}")
        lines.append("stage B (attend, a v1 cascade; stage-A tensors are inputs):")
        lines += [f"  {s}" for s in self.attend.stmts]
        lines.append("key blocks (the block lists a key loop visits):")
        lines += [f"  {kb}" for kb in self.key_blocks] or ["  none: every key tile is visited"]
        for kb in self.key_blocks:
            s = a.stmt(kb.tensor)
            if s is not None and s.select:
                what = "at most k" if s.select[0] == "topk" else "the fewest reaching mass p"
                row_blocks = {(b.index, b.size) for b in self.original.blocks if b.index != self.original.key}
                unit = "query block" if any((x.index, x.div) in row_blocks for x in kb.subs) else "query token"
                lines.append(f"  {kb.tensor}: {s.select[0]}, {what} = {s.select[1]} of the key blocks of one "
                             f"{unit} ({kb.per}); in the tile program a query tile visits the union of "
                             f"its tokens' blocks and masks each token inside; the cpu decode program "
                             f"(config PROGRAM='decode', PACK = the heads sharing a selection, BLOCK_M = 1) "
                             f"makes a task one token x its GQA group; on the cpu with no config given a "
                             f"call takes the cheaper of the two by the share of key tiles each visits "
                             f"(einattn/sparse.py, SparseKernel.choose)")
                if s.select[0] == "topk":
                    nb = f"ceil({self.original.key} / {kb.size})"
                    lines.append(f"    expected key tiles visited: per token at most {s.select[1]} of the {nb} "
                                 f"blocks; per query tile of BLOCK_M tokens between {s.select[1]} / {nb} (the "
                                 f"tokens agree) and min(1, BLOCK_M * {s.select[1]} / {nb}) (they never do); "
                                 f"kernel.block_mask(...) gives a call's lists")
        return "\n".join(lines)


def _key_blocks(c: Cascade) -> dict[str, KeyBlocks]:
    blocks = {b.name: b for b in c.blocks}
    out: dict[str, KeyBlocks] = {}
    for s in c.stmts:
        for e in s.expr.walk():
            if e.op is not Op.READ:
                continue
            t, subs = e.arg
            dims = c.dims_of(t)
            for sub, d in zip(subs, dims):
                b = blocks.get(d)
                if b is not None and sub.index == b.index == c.key and sub.div == b.size:
                    out.setdefault(t, KeyBlocks(t, dims, subs, d, b.size))
    return out


def split(c: Cascade) -> Stages:
    """The two stages of a v1.1 cascade; a SpecError says why one cannot be split."""
    kbs = _key_blocks(c)
    seeds = {s.name for s in c.stmts if s.select} | set(kbs)
    for t in list(kbs):
        if c.input(t) is not None:          # an input mask given by the caller: no stage A for it
            seeds.discard(t)
    g = c.dependency_graph()
    stage_a: set[str] = set()
    for t in seeds:
        stage_a |= {x for x in nx.ancestors(g, t) | {t} if g.nodes[x]["kind"] == "stmt"}
    blocks = {b.name for b in c.blocks}
    for s in c.stmts:                       # block-level values computed from stage A join it
        reads = [r for r in s.expr.reads() if c.stmt(r) is not None]
        if s.name not in stage_a and c.key not in s.indices and (
                set(s.indices) & blocks or (c.key not in s.all_indices and reads and set(reads) <= stage_a)):
            stage_a.add(s.name)
    for s in c.stmts:
        if s.name in stage_a and c.key in s.indices:
            raise SpecError(f"'{s.name}' feeds a selection but keeps the key index '{c.key}'", loc=s.loc or Loc(c.file),
                            expected="selection inputs over blocks (a sum over the keys of a block is fine)",
                            fix=f"pool the keys into blocks first, e.g. Kb[b,h,j,d] = K[b,h,{c.key},d] * "
                                f"where({c.key} // BS == j, 1.0, 0.0) / C[j]")
    a_stmts = tuple(s for s in c.stmts if s.name in stage_a)
    b_stmts = tuple(s for s in c.stmts if s.name not in stage_a)
    if not b_stmts:
        raise SpecError("the cascade is all selection: no statement attends", loc=Loc(c.file),
                        fix="read the selection in a mask, e.g. where(Sel[b,h,m,n // BS] > 0, S[b,h,m,n], -inf)")
    for o in c.outputs:
        if o in stage_a:
            raise SpecError(f"output '{o}' is computed by the selection stage", loc=Loc(c.file),
                            fix="return the attention outputs; compile the selection on its own to inspect it")
    read_by_b = {r for s in b_stmts for r in s.expr.reads() if r in stage_a}
    a_out = tuple(s.name for s in a_stmts if s.name in read_by_b)
    a_inputs = tuple(t for t in c.inputs if any(t.name in s.expr.reads() for s in a_stmts))
    select = replace(c, inputs=a_inputs, stmts=a_stmts, outputs=a_out, name=f"{c.name}_select")
    b_inputs = tuple(t for t in c.inputs if any(t.name in s.expr.reads() for s in b_stmts))
    b_inputs += tuple(TensorDecl(t, c.dims_of(t), c.stmt(t).loc) for t in a_out)
    attend = replace(c, inputs=b_inputs, stmts=b_stmts, blocks=(), name=f"{c.name}_attend")
    for s in b_stmts:
        if s.select or set(s.all_indices) & blocks - {i for t in b_inputs for i in t.indices}:
            raise SpecError(f"'{s.name}' uses a block index that no stage-A tensor it reads carries",
                            loc=s.loc or Loc(c.file), fix="compute block-level values in the selection stage")
    try:
        verify(attend)
    except SpecError as e:
        raise SpecError(f"the attention stage of {c.name} is not a valid cascade: {e}", loc=Loc(c.file)) from None
    return Stages(c, select, attend, tuple(kbs[t] for t in kbs))
