"""The decode program: the tile program for calls with few query rows (decoding, short chunks).

A decoding step has one query row (or a few) per head against thousands of keys:
it is bound by reading K and V once. The prefill tile program computes whole
query tiles (16 to 128 rows) whatever the query length is, and under GQA reads
each KV head once per query head. The decode program instead
- packs the rows of ``pack`` heads that read the same key-side rows (the heads of
  one GQA group: key-side reads subscript the head only as ``h // r``) with the
  query rows of each into one row block (``rows = pack x query rows``), so each
  K/V row is read once per row block;
- makes the key tile the vectorised dimension (the backends' business);
- splits the key loop across workers (``KV_SPLITS``, merged as ``compiler/splits.py``
  says) when the row blocks are too few to keep every core or SM busy.

Which program a call gets is decided here from its sizes (:func:`choose_program`),
so every backend chooses alike; a config may force either (``PROGRAM``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .kernel_plan import Kind, KernelPlan
from .splits import split_refusal

PROGRAMS = ("auto", "tile", "decode")
DECODE_MAX_ROWS = 8         # "auto" takes the decode program for query lengths up to this
MAX_PACK = 16               # heads packed into one row block at most


@dataclass(frozen=True, slots=True)
class Packing:
    """The grid index whose heads may share key tiles, and how key-side reads subscript it.

    ``index``: the grid index (``h``), or None when every grid index is read plainly by
    K or V; ``divisor``: the param ``r`` of key-side reads ``h // r`` (heads ``r*g ..
    r*g + r - 1`` read the same rows), or None when no key-side read uses ``index``
    (multi-query attention: every head reads the same rows)."""
    index: str | None
    divisor: str | None = None

    def __str__(self) -> str:
        if self.index is None:
            return "no heads packed (K and V are read per grid index)"
        if self.divisor is None:
            return f"heads '{self.index}' packed (K and V do not depend on '{self.index}')"
        return f"heads '{self.index}' packed by groups of '{self.divisor}' (K and V read at {self.index} // {self.divisor})"


def key_side_reads(kp: KernelPlan) -> list:
    """The reads shared by every row of a tile: the score's key operands and the value reads."""
    out = [op.key_read for op in kp.scores]
    out += [op.value_read for p in kp.passes for op in p.loop if op.kind is Kind.VALUE]
    return out


def packing(kp: KernelPlan) -> Packing:
    """The innermost grid index that every key-side read subscripts only as ``i // p`` (one
    param ``p``) or not at all (:class:`Packing`)."""
    shared = key_side_reads(kp)
    for g in reversed(kp.grid):
        divs = {s.div for e in shared for s in e.arg[1] if s.index == g}
        if None in divs or len(divs) > 1:
            continue
        return Packing(g, next(iter(divs), None))
    return Packing(None)


def pack_size(pk: Packing, sizes: dict, params: dict, limit: int = MAX_PACK) -> int:
    """How many heads one row block packs: the largest divisor of the group size (``r``, or
    the number of heads when K and V do not depend on them) that is at most ``limit``."""
    if pk.index is None or (pk.divisor is not None and pk.divisor not in params):
        return 1
    group = int(params[pk.divisor]) if pk.divisor is not None else int(sizes[pk.index])
    return max(d for d in range(1, max(1, min(group, limit)) + 1) if group % d == 0) if group >= 1 else 1


def pack_refusal(kp: KernelPlan, pack: int, sizes: dict, params: dict) -> str | None:
    """Why ``pack`` heads cannot share one row block at these sizes, or None when they can."""
    if pack == 1:
        return None
    pk = packing(kp)
    if pk.index is None:
        return (f"PACK={pack}: K and V of '{kp.cascade.name}' are read per grid index "
                f"({', '.join(kp.grid)}), so rows of different heads do not share key tiles; use PACK=1")
    if pk.divisor is not None and pk.divisor not in params:
        return None                 # checked by the call that knows the param
    group = int(params[pk.divisor]) if pk.divisor is not None else int(sizes[pk.index])
    heads = int(sizes.get(pk.index, group))
    if heads % pack:
        return f"PACK={pack} must divide the {heads} heads '{pk.index}'; use a divisor of it"
    what = f"{pk.divisor}={group}" if pk.divisor is not None else f"the {group} heads '{pk.index}'"
    if group % pack:
        return f"PACK={pack} must divide {what} (packed heads must read the same K and V rows); use a divisor of it"
    return None


def query_block(m: int) -> int:
    """Query rows per row block of the decode program: m rounded up to a power of two."""
    return 1 << max(int(m) - 1, 0).bit_length()


@dataclass(frozen=True, slots=True)
class Choice:
    program: str          # "tile" | "decode"
    why: str


def choose_program(kp: KernelPlan, sizes: dict, forced: str = "auto", max_rows: int = DECODE_MAX_ROWS) -> Choice:
    """The tile program for a call with these sizes: ``forced`` when it is not "auto", else
    decode for query lengths up to ``max_rows`` (a backend's measured crossover; default
    ``DECODE_MAX_ROWS``)."""
    if forced not in PROGRAMS:
        raise ValueError(f"PROGRAM={forced!r}: expected one of {', '.join(PROGRAMS)}")
    m = int(sizes[kp.query])
    if forced != "auto":
        return Choice(forced, f"PROGRAM={forced} set in the config")
    if m <= max_rows:
        return Choice("decode", f"{kp.query}={m} <= {max_rows} query rows: the decode program packs heads and "
                                f"query rows into one row block instead of a query tile of mostly padding")
    return Choice("tile", f"{kp.query}={m} > {max_rows} query rows: the query tile program")


def split_count(kp: KernelPlan, tasks: int, workers: int, key_tiles: int, limit: int = 8) -> int:
    """Parts to split the key loop into so that ``tasks`` row blocks keep ``workers`` busy: the
    power of two reaching 2 x workers tasks, at most ``limit`` and the key tiles; 1 for a
    plan whose key loop cannot be split (``split_refusal``)."""
    if split_refusal(kp) is not None or tasks >= 2 * workers:
        return 1
    s = 1
    while s < limit and tasks * s < 2 * workers and key_tiles >= 2 * s:
        s *= 2
    return s


def describe(kp: KernelPlan, sizes: dict, params: dict, forced: str = "auto", max_rows: int = DECODE_MAX_ROWS) -> str:
    """What ``explain`` prints for a shape: the program chosen and why, and for decode the packing."""
    ch = choose_program(kp, sizes, forced, max_rows)
    lines = [f"program: {ch.program} ({ch.why})"]
    if ch.program == "decode":
        pk = packing(kp)
        pack = pack_size(pk, sizes, params)
        rows = query_block(int(sizes[kp.query]))
        lines.append(f"  {pk}; {pack} head(s) x {rows} query row(s) = {pack * rows} rows per row block")
        if (why := split_refusal(kp)) is not None:
            lines.append(f"  the key loop is not split: {why}")
    return "\n".join(lines)
