"""The pass plan: the rewritten cascade as an ordered program of passes over key tiles.

This is what every executor renders: the streaming executor (torch), the CPU
(TVM) and GPU (Triton) backends. Per pass, ``loop`` lists the statements run on
each key tile in order (score tiles recomputed from earlier passes included);
``epilogue`` the key-free statements run once the pass is over. ``prologue``
holds key-free statements over inputs only.
"""
from __future__ import annotations

from dataclasses import dataclass

from einattn.ir import Cascade, UnsupportedError, verify

from .passes import Placement, Role, count_passes, pass_chain, place
from .rewrites import PIPELINE


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    role: Role
    recomputed: bool = False   # a key tile of an earlier pass, recomputed here


@dataclass(frozen=True, slots=True)
class PassPlan:
    index: int
    loop: tuple[Step, ...]
    epilogue: tuple[Step, ...]


@dataclass(frozen=True)
class Plan:
    """What ``einattn.explain`` returns.

    Attributes: ``naive_passes`` (as written), ``passes`` (after rewrites),
    ``rewrites`` (names of the rewrites that changed the cascade, in order),
    ``cascade`` (the rewritten cascade), ``original``, ``schedule``.
    """
    original: Cascade
    cascade: Cascade
    naive_passes: int
    passes: int
    rewrites: tuple[str, ...]
    schedule: tuple[PassPlan, ...]
    prologue: tuple[Step, ...]
    placements: dict[str, Placement]
    naive_chain: tuple[str, ...]
    stages: tuple[tuple[str, Cascade], ...]

    def __str__(self) -> str:
        from .report import render_plan
        return render_plan(self)

    @property
    def state(self) -> dict[int, list[str]]:
        """Per pass: the per-row state carried across key tiles (reductions, running rows)."""
        out: dict[int, list[str]] = {}
        for p in self.schedule:
            out[p.index] = [s.name for s in p.loop if s.role in (Role.REDUCE, Role.RUNNING_ROW)]
        return out


def rewrite(c: Cascade) -> tuple[Cascade, tuple[str, ...], tuple[tuple[str, Cascade], ...]]:
    """Run the flat pipeline; return the result, the names that fired and each stage."""
    fired, stages = [], []
    for name, fn in PIPELINE:
        new = fn(c)
        if new is not c:
            verify(new)
            fired.append(name)
            stages.append((name, new))
            c = new
    return c, tuple(fired), tuple(stages)


def schedule(c: Cascade) -> tuple[tuple[Step, ...], tuple[PassPlan, ...], dict[str, Placement]]:
    pl = place(c)
    n = count_passes(c)
    prologue = tuple(Step(s.name, Role.ROW) for s in c.stmts
                     if pl[s.name].role is Role.ROW and pl[s.name].pass_no == 0)
    passes = []
    for k in range(1, n + 1):
        here = {s.name for s in c.stmts
                if pl[s.name].pass_no == k and pl[s.name].role is not Role.ROW}
        need = set(here)
        for s in reversed(c.stmts):           # tiles of earlier passes that this pass reads
            if s.name in need:
                for r in s.expr.reads():
                    if r in pl and pl[r].role is Role.TILE:
                        need.add(r)
        loop = tuple(Step(s.name, pl[s.name].role, s.name not in here) for s in c.stmts if s.name in need)
        epi = tuple(Step(s.name, Role.ROW) for s in c.stmts
                    if pl[s.name].role is Role.ROW and pl[s.name].pass_no == k)
        passes.append(PassPlan(k, loop, epi))
    return prologue, tuple(passes), pl


def make_plan(c: Cascade) -> Plan:
    if c.selects:
        raise UnsupportedError(f"{c.name} selects key blocks (spec v1.1): it is planned in two stages, "
                               f"compiler.selection.split, and its attention stage is planned on its own")
    new, fired, stages = rewrite(c)
    prologue, passes, pl = schedule(new)
    return Plan(c, new, count_passes(c), count_passes(new), fired, passes, prologue, pl,
                tuple(pass_chain(c)), stages)


def check_streamable(plan: Plan) -> None:
    """Streaming executors and kernels produce key-free outputs only."""
    c = plan.cascade
    for o in c.outputs:
        if c.key in c.stmt(o).indices:
            raise UnsupportedError(f"output '{o}[{', '.join(c.stmt(o).indices)}]' keeps the key index "
                                   f"'{c.key}': streamed kernels never hold a full [.., {c.key}] tensor; "
                                   f"reduce over '{c.key}' or use target='reference'")
