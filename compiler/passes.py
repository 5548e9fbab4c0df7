"""Pass analysis: how many traversals of the key index a cascade needs.

A statement that iterates the key index and reads the *complete* result of a
reduction over keys cannot run in the pass that produces it; passes = 1 + the
longest chain of such dependencies (FuseMax). A read wrapped in ``running(..)``
(left by the online-rescaling rewrite) sees the value so far, so it does not
wait for the pass to end.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from einattn.ir import Cascade, Op, Stmt


class Role(enum.Enum):
    TILE = "tile"            # keeps the key index: computed per key tile
    REDUCE = "reduce"        # reduces the key index: a running reduction over key tiles
    RUNNING_ROW = "running"  # key-free, reads running values: recomputed after each key tile
    ROW = "row"              # key-free: computed once, after its pass (pass 0: before any)


@dataclass(frozen=True, slots=True)
class Placement:
    pass_no: int
    role: Role
    reason: str | None = None   # the read that forced this pass (None if pass 1 or free)


def running_reads(s: Stmt) -> set[str]:
    return {e.src[0].arg[0] for e in s.expr.walk() if e.op is Op.RUNNING}


def place(c: Cascade) -> dict[str, Placement]:
    """Pass number and role of every statement, in order."""
    key = c.key
    tile_pass: dict[str, int] = {t.name: 1 for t in c.inputs if key in t.indices}
    done: dict[str, int] = {t.name: 0 for t in c.inputs if key not in t.indices}
    out: dict[str, Placement] = {}
    for s in c.stmts:
        run = running_reads(s)
        if key in s.all_indices:
            p, why = 1, None
            for r in s.expr.reads():
                q = tile_pass[r] if r in tile_pass else (done[r] if r in run else done[r] + 1)
                if q > p:
                    p, why = q, r
            role = Role.TILE if key in s.indices else Role.REDUCE
            (tile_pass if role is Role.TILE else done)[s.name] = p
        else:
            reads = s.expr.reads()
            p = max((done[r] for r in reads), default=0)
            why = max(reads, key=lambda r: done[r], default=None) if p else None
            role = Role.RUNNING_ROW if run else Role.ROW
            done[s.name] = p
        out[s.name] = Placement(p, role, why)
    return out


def count_passes(c: Cascade) -> int:
    pl = place(c)
    return max([p.pass_no for p in pl.values() if p.role is not Role.ROW] + [1])


def pass_chain(c: Cascade) -> list[str]:
    """Human-readable reasons for each pass beyond the first."""
    pl = place(c)
    lines, seen = [], set()
    for s in c.stmts:
        p = pl[s.name]
        if p.role in (Role.TILE, Role.REDUCE) and p.pass_no > 1 and p.pass_no not in seen:
            seen.add(p.pass_no)
            src = c.stmt(p.reason)
            what = "a reduction over keys" if src is not None and c.key in src.reduced else "computed from one"
            lines.append(f"pass {p.pass_no} starts at {s.name}: it iterates '{c.key}' and reads "
                         f"{p.reason}, {what}, complete only after pass {p.pass_no - 1}")
    return lines
