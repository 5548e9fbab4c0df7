"""The CPU kernel's tunables, their hard constraints and the search space over them.

Everything here is pure: no TVM import, no compiling. ``validate`` prunes a config
before anything is built (divisibility, register tiles, cache fit); ``space``
lists the candidates an autotuner may time for one kernel plan and workload.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

from einattn.compiler import Kind, KernelPlan
from einattn.compiler.decode import MAX_PACK, PROGRAMS
from einattn.compiler.splits import split_refusal
from einattn.ir import UnsupportedError

from .host import CacheSizes, HostCpu, read_cache_sizes
from .pairs import usable as bf16_dot_usable

RESERVED_REGISTERS = 4        # a register tile leaves these for its operands (broadcast, loads)
MAX_KV_SPLITS = 64
DOTS = ("auto", "fp32")       # DOT: the bf16 products on vdpbf16ps where possible, or widened
MAX_DECODE_ROWS = 64          # PACK x BLOCK_M of a decode row block


@dataclass(frozen=True, slots=True)
class CpuConfig:
    """Tunables of the CPU kernel (all positive ints; see the template's header).

    ``BLOCK_M`` query rows per task, ``BLOCK_N`` keys per streamed tile,
    ``SCORE_RJ`` x ``SCORE_RI`` the keys x queries of one score register tile,
    ``PV_RM`` x ``PV_E`` the query rows x value columns of one P.V register tile,
    ``KV_SPLITS`` the parts the key loop of one row block is split into, run in
    parallel and merged (``compiler/splits.py``; 1: no split).
    ``PROGRAM`` the tile program (``compiler/decode.py``): ``tile`` (query tiles of
    BLOCK_M rows, vectorised along the rows), ``decode`` (row blocks of PACK heads x
    BLOCK_M query rows, vectorised along the keys), ``auto`` (chosen per call by the
    query length; in a decode call the keys not given are chosen per call too).
    ``PACK`` heads per decode row block (0: chosen per call, ``compiler.decode.pack_size``).
    ``DOT`` ``auto``: bf16 score and value products run on vdpbf16ps where the host has it
    (``pairs.py``: P rounded to bf16); ``fp32``: their operands are widened to fp32 (the tile
    program; the decode program always widens).
    The defaults keep 16 AVX-512 accumulators per register tile.
    """
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    SCORE_RJ: int = 4
    SCORE_RI: int = 64
    PV_RM: int = 4
    PV_E: int = 64
    KV_SPLITS: int = 1
    PROGRAM: str = "auto"
    PACK: int = 0
    DOT: str = "auto"

    AUTO_KEYS = ("PACK",)      # ints where 0 means "chosen per call"

    @staticmethod
    def keys() -> dict[str, type]:
        return {f.name: (str if f.name in ("PROGRAM", "DOT") else int) for f in dataclasses.fields(CpuConfig)}

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @property
    def decode(self) -> bool:
        return self.PROGRAM == "decode"

    def rows(self) -> int:
        """Rows of one task: BLOCK_M query rows, or PACK heads x BLOCK_M in the decode program."""
        return max(self.PACK, 1) * self.BLOCK_M if self.decode else self.BLOCK_M

    def check(self, vec: int) -> None:
        """The rules the template needs to render a correct kernel, with what to change. A
        decode config is checked once its PACK is known (0 passes: it is chosen per call)."""
        rules = [
            (self.BLOCK_M <= 1024 and self.BLOCK_N <= 1024, "BLOCK_M and BLOCK_N must be <= 1024"),
            (1 <= self.KV_SPLITS <= MAX_KV_SPLITS, f"KV_SPLITS={self.KV_SPLITS} must be in 1..{MAX_KV_SPLITS}"),
            (self.PROGRAM in PROGRAMS, f"PROGRAM={self.PROGRAM!r} must be one of {', '.join(PROGRAMS)}"),
            (0 <= self.PACK <= MAX_PACK, f"PACK={self.PACK} must be in 0..{MAX_PACK} (0: chosen per call)"),
            (self.DOT in DOTS, f"DOT={self.DOT!r} must be one of {', '.join(DOTS)}"),
        ]
        if self.decode:
            rules += [
                (self.BLOCK_N % vec == 0, f"BLOCK_N={self.BLOCK_N} must be a multiple of the vector width {vec} "
                                          f"in the decode program"),
                (self.rows() <= MAX_DECODE_ROWS, f"PACK x BLOCK_M = {self.rows()} rows per decode row block: at "
                                                 f"most {MAX_DECODE_ROWS}; lower PACK or BLOCK_M"),
                (self.rows() % self.PV_RM == 0, f"PV_RM={self.PV_RM} must divide the {self.rows()} rows of a decode "
                                                f"row block (PACK x BLOCK_M)"),
            ]
        else:
            rules += [
                (self.SCORE_RI % vec == 0, f"SCORE_RI={self.SCORE_RI} must be a multiple of the vector width {vec}"),
                (self.BLOCK_M % self.SCORE_RI == 0, f"BLOCK_M={self.BLOCK_M} must be a multiple of SCORE_RI={self.SCORE_RI}"),
                (self.BLOCK_N % self.SCORE_RJ == 0, f"BLOCK_N={self.BLOCK_N} must be a multiple of SCORE_RJ={self.SCORE_RJ}"),
                (self.BLOCK_M % self.PV_RM == 0, f"BLOCK_M={self.BLOCK_M} must be a multiple of PV_RM={self.PV_RM}"),
            ]
        for ok, why in rules:
            if not ok:
                raise UnsupportedError(f"CPU config {dataclasses.asdict(self)}: {why}")

    def check_plan(self, kp: KernelPlan) -> None:
        """``KV_SPLITS > 1`` needs a plan whose key loop can be split (``split_refusal``)."""
        if self.KV_SPLITS > 1 and (why := split_refusal(kp)) is not None:
            raise UnsupportedError(f"CPU config KV_SPLITS={self.KV_SPLITS}: {why}; use KV_SPLITS=1")

    def validate(self, host: HostCpu, workload=None, kp: KernelPlan | None = None,
                 caches: CacheSizes | None = None) -> list[str]:
        """The hard constraints on this host, and for a workload: raise ``UnsupportedError``
        naming the broken rule and what to change; return the soft notes (an L1 overflow).

        Rules: ``check`` (divisibility, bounds); ``registers``: each register tile's
        accumulators (``SCORE_RJ*SCORE_RI/VEC``, ``PV_RM*PV_E/VEC``) fit the host's vector
        registers less ``RESERVED_REGISTERS`` (the score and P.V tiles live in different
        loops, so each must fit, not their sum); with a plan: ``split`` (``check_plan``);
        with a plan and a workload (``backends.base.Workload``): ``L2``: the per-task
        working set (:func:`working_set`) fits the L2 of one core (``caches``, default
        :func:`read_cache_sizes`); a working set over L1 is a note, not an error.
        """
        self.check(host.fp32_lanes)
        vec, budget = host.fp32_lanes, host.vector_registers - RESERVED_REGISTERS
        tiles = [("P.V", self.PV_RM * -(-self.PV_E // vec), "PV_RM or PV_E")]
        if not self.decode:
            tiles.insert(0, ("score", self.SCORE_RJ * self.SCORE_RI // vec, "SCORE_RJ or SCORE_RI"))
        for tile, acc, fix in tiles:
            if acc > budget:
                raise UnsupportedError(f"CPU config {self.as_dict()}: rule 'registers': the {tile} register tile "
                                       f"needs {acc} vector accumulators, over the {budget} of this host "
                                       f"({host.vector_registers} registers less {RESERVED_REGISTERS} for "
                                       f"operands); lower {fix}")
        notes: list[str] = []
        if kp is None:
            return notes
        self.check_plan(kp)
        if workload is None:
            return notes
        caches = caches or read_cache_sizes()
        ws = working_set(kp, self, workload)
        if ws > caches.l2:
            raise UnsupportedError(f"CPU config {self.as_dict()}: rule 'L2': one task's working set is "
                                   f"{ws // 1024} KiB, over the {caches.l2 // 1024} KiB L2 of a core; "
                                   f"lower BLOCK_M or BLOCK_N")
        if ws > caches.l1d:
            notes.append(f"L1: one task's working set is {ws // 1024} KiB, over the {caches.l1d // 1024} KiB L1d")
        return notes

    @staticmethod
    def default(host: HostCpu) -> "CpuConfig":
        """The fields' defaults (what ``prepare`` uses when given no config) where their register
        tiles fit the host (AVX-512), else register tiles of half the host's vector registers."""
        cfg = CpuConfig()
        vec = host.fp32_lanes
        if max(cfg.SCORE_RJ * cfg.SCORE_RI, cfg.PV_RM * cfg.PV_E) // vec <= host.vector_registers - RESERVED_REGISTERS:
            return cfg
        acc = host.vector_registers // 2
        return dataclasses.replace(cfg, SCORE_RJ=acc // 4, SCORE_RI=4 * vec, PV_RM=acc // 4, PV_E=4 * vec)

    @staticmethod
    def space(kp: KernelPlan, workload, host: HostCpu, caches: CacheSizes | None = None) -> list["CpuConfig"]:
        """The configs worth timing for ``kp`` at ``workload``: each passes ``validate``, the
        default (:meth:`default`) first when it does, then the rest in a fixed order (those whose
        working set fits L1 first, then the product order of the axes below).

        Axes: ``BLOCK_M`` in 16..128 up to the query length rounded up to a power of two
        (m <= 16: only 16); ``BLOCK_N`` in 32..256; score register tiles (RJ, RI) and P.V
        tiles (RM, E) each in (A/4, 4 VEC), (A/2, 2 VEC), (A, VEC) with A = half the vector
        registers (16 with AVX-512: (4, 64), (8, 32), (16, 16)), RI and RM dividing BLOCK_M
        and E at most the widest value;
        ``KV_SPLITS`` in 1, 2, 4, 8 only for a splittable plan whose tasks (grid sizes x query
        tiles) are fewer than 4 x the cores and whose key tiles give every part one.
        ``DOT`` in auto, fp32 for bf16 workloads on a host with vdpbf16ps (``pairs.py``), else auto.
        For query lengths up to ``DECODE_MAX_ROWS`` also the decode program (:func:`decode_space`).
        Every candidate names its PROGRAM; the default is what an untuned call runs (:func:`resolve`).
        Size: at most 4 x 4 x 3 x 3 = 144 unsplit candidates (long queries, wide values; twice that
        for bf16 with vdpbf16ps), about
        4 x 9 = 36 per split count for decoding shapes (m <= 16); fewer for narrow values.
        """
        caches = caches or read_cache_sizes()
        vec = host.fp32_lanes
        m = workload.size(kp.query, 1)
        n = workload.size(kp.key, 1)
        widths = [workload.size(v, 1) for v in kp.value] or [4 * vec]
        e_max = max(widths)
        grid = math.prod(workload.size(g, 1) for g in kp.grid)
        reach = 1 << max(m - 1, 0).bit_length()                   # m rounded up to a power of two
        block_m = [b for b in (16, 32, 64, 128) if b <= max(reach, 16)]
        block_n = [32, 64, 128, 256]
        acc = host.vector_registers // 2               # accumulators per register tile
        score = [(acc // 4, 4 * vec), (acc // 2, 2 * vec), (acc, vec)]
        pv = list(score)
        pv = [(rm, pe) for rm, pe in pv if pe <= e_max] or [min(pv, key=lambda t: t[1])]
        splittable = split_refusal(kp) is None

        out: list[CpuConfig] = []
        for bm, bn, (rj, ri), (rm, pe), s in itertools.product(block_m, block_n, score, pv, (1, 2, 4, 8)):
            if bm % ri or bm % rm:
                continue
            if s > 1:
                tasks = grid * -(-m // bm)
                if not splittable or tasks >= 4 * caches.cores or -(-n // bn) < s:
                    continue
            out.append(CpuConfig(bm, bn, rj, ri, rm, pe, s, PROGRAM="tile"))
        if workload.dtype == "bfloat16" and bf16_dot_usable(host.has_bf16, vec):
            # the same tiles with the bf16 products widened to fp32 (the vdpbf16ps ones first)
            out += [dataclasses.replace(c, DOT="fp32") for c in out]
        sizes = workload.as_dict()
        params = workload_params(kp, sizes)
        if m <= DECODE_MAX_ROWS:
            out += decode_space(kp, sizes, params, e_max, caches.cores)
        default = resolve(CpuConfig.default(host), frozenset(), kp, sizes, params, caches.cores)
        ok: list[tuple[bool, CpuConfig]] = []
        seen = set()
        for cfg in [default] + out:
            if cfg in seen:
                continue
            seen.add(cfg)
            try:
                notes = cfg.validate(host, workload, kp, caches)
            except UnsupportedError:
                continue
            ok.append((bool(notes), cfg))
        if ok and ok[0][1] == default:
            return [default] + [c for _, c in sorted(ok[1:], key=lambda t: t[0])]
        return [c for _, c in sorted(ok, key=lambda t: t[0])]


# a decode call whose config does not set them: BLOCK_N x the contraction width about 16K floats
# (BLOCK_N 256 at d=64, 128 at d=128; within 64..256 and the keys rounded up to a power of two:
# 512 vector lanes made LLVM take minutes on small-d kernels) and SCORE_RJ x width 256 (4 keys at d=64, 2 at d=128; 4
# would spill at d=128): measured at h=8, n=8192, m=1 (d=64: 1.32 vs 1.50 ms with BLOCK_N 128)
# and GQA h=32, g=8, d=128 (3.57 ms with SCORE_RJ 2, 4.93 ms with 4)
DECODE_TILE_FLOATS = 16384
DECODE_MAX_QUERY_BLOCK = 16  # query rows per decode row block when BLOCK_M is not set
# "auto" takes the decode program up to this query length: measured on Zen 5 (one thread, softmax
# d=64, n=8192), decode against the tile program with BLOCK_M=16: 88 vs 695 cycles per key and row
# at m=1, 23 vs 73 at m=8, 33 vs 41 at m=16, 30 vs 34 at m=32 (benchmarks/RESULTS.md)
DECODE_MAX_ROWS = 16


def resolve(cfg: CpuConfig, given: frozenset, kp: KernelPlan, sizes: dict, params: dict, cores: int) -> CpuConfig:
    """The concrete config of one call. ``PROGRAM="auto"`` becomes the program
    ``compiler.decode.choose_program`` picks for the call's query length (decode up to
    ``DECODE_MAX_ROWS``); the keys the user did not set (``given``) are then chosen for the call
    (``cores``: the threads the call runs on).
    Decode: BLOCK_M the query length rounded up to a power of two (at most 16), PACK the heads
    of a KV group (``pack_size``), BLOCK_N and SCORE_RJ by the contraction width
    (``DECODE_TILE_FLOATS``), PV_RM the largest divisor of the rows up to 4.
    Tile: BLOCK_M the query length rounded up to a power of two within 16..64 (with SCORE_RI
    at most BLOCK_M, keeping SCORE_RJ x SCORE_RI accumulators). Both: KV_SPLITS enough parts
    for 2 tasks per core (``split_count``). Raises the rule a given key breaks."""
    from einattn.compiler.decode import choose_program, pack_refusal, pack_size, packing, query_block, split_count
    program = choose_program(kp, sizes, cfg.PROGRAM, DECODE_MAX_ROWS).program
    m, n = int(sizes[kp.query]), int(sizes[kp.key])
    if program == "tile":
        out = {"PROGRAM": "tile"}
        if not given & {"BLOCK_M", "SCORE_RI", "SCORE_RJ"}:
            bm = min(max(query_block(m), 16), cfg.BLOCK_M)
            if bm < cfg.BLOCK_M:
                ri = min(cfg.SCORE_RI, bm)
                out.update(BLOCK_M=bm, SCORE_RI=ri, SCORE_RJ=cfg.SCORE_RJ * cfg.SCORE_RI // ri)
        if "KV_SPLITS" not in given:
            bm = out.get("BLOCK_M", cfg.BLOCK_M)
            tasks = math.prod(int(sizes[g]) for g in kp.grid) * -(-m // bm)
            out["KV_SPLITS"] = split_count(kp, tasks, cores, -(-n // cfg.BLOCK_N))
        return dataclasses.replace(cfg, **out)
    out = {"PROGRAM": "decode"}
    if "BLOCK_M" not in given:
        out["BLOCK_M"] = min(query_block(m), DECODE_MAX_QUERY_BLOCK)
    mq = out.get("BLOCK_M", cfg.BLOCK_M)
    if not cfg.PACK:
        out["PACK"] = pack_size(packing(kp), sizes, params, limit=max(1, min(MAX_PACK, MAX_DECODE_ROWS // mq)))
    pack = out.get("PACK", cfg.PACK)
    if (why := pack_refusal(kp, pack, sizes, params)) is not None:
        raise UnsupportedError(f"CPU config: {why}")
    width = max([int(sizes[f]) for f in kp.contract if f in sizes] or [64])
    if "BLOCK_N" not in given:          # a key tile of K rows of about 64 KiB, no longer than the keys
        out["BLOCK_N"] = min(256, max(64, min(DECODE_TILE_FLOATS // width // 16 * 16, query_block(n))))
    if "SCORE_RJ" not in given:         # the RJ keys' K vectors stay in registers
        out["SCORE_RJ"] = min(8, max(1, 256 // width))
    rows = pack * mq
    if "PV_RM" not in given:
        out["PV_RM"] = max(d for d in range(1, 5) if rows % d == 0)
    if "KV_SPLITS" not in given:
        tasks = decode_tasks(kp, sizes, mq, pack)
        ktiles = -(-n // out.get("BLOCK_N", cfg.BLOCK_N))
        out["KV_SPLITS"] = split_count(kp, tasks, cores, ktiles)
    return dataclasses.replace(cfg, **out)


def decode_space(kp: KernelPlan, sizes: dict, params: dict, e_max: int, cores: int) -> list[CpuConfig]:
    """Decode candidates: BLOCK_M the query length rounded up to a power of two, PACK every
    divisor of the KV group (rows at most ``MAX_DECODE_ROWS``), BLOCK_N in 64, 128, 256, SCORE_RJ
    (keys per dot-product block) in 2, 4, 8, PV_RM the largest divisor of the rows up to 4, PV_E
    64 (or the value width), KV_SPLITS in 1, 2, 4, 8 (a splittable plan, fewer than 4 tasks per
    core, a key tile per part)."""
    from einattn.compiler.decode import pack_refusal, packing, query_block
    mq = query_block(int(sizes[kp.query]))
    pk = packing(kp)
    group = 1
    if pk.index is not None and (pk.divisor is None or pk.divisor in params):
        group = int(params[pk.divisor]) if pk.divisor is not None else int(sizes[pk.index])
    packs = [p for p in range(1, min(group, MAX_PACK) + 1)
             if group % p == 0 and p * mq <= MAX_DECODE_ROWS and pack_refusal(kp, p, sizes, params) is None]
    splittable = split_refusal(kp) is None
    out = []
    for pack, bn, rj, s in itertools.product(packs or [1], (64, 128, 256), (2, 4, 8), (1, 2, 4, 8)):
        rows = pack * mq
        if s > 1 and (not splittable or decode_tasks(kp, sizes, mq, pack) >= 4 * cores
                      or -(-int(sizes[kp.key]) // bn) < s):
            continue
        rm = max(d for d in range(1, 5) if rows % d == 0)
        out.append(CpuConfig(BLOCK_M=mq, BLOCK_N=bn, SCORE_RJ=rj, PV_RM=rm, PV_E=min(64, e_max), KV_SPLITS=s,
                             PROGRAM="decode", PACK=pack))
    return out


def workload_params(kp: KernelPlan, sizes: dict) -> dict:
    """The params the spec derives from the sizes (a GQA group ``r = h // g``); {} when one
    needs a value the caller gives."""
    from einattn.backends.base import complete_params
    try:
        return complete_params(kp.cascade, sizes, {})
    except Exception:          # noqa: BLE001 - a param without a default: the call knows it
        return {}


def decode_tasks(kp: KernelPlan, sizes: dict, query_block: int, pack: int) -> int:
    """Row blocks of a decode call: the grid with the packed index in groups of ``pack``, times
    the query blocks."""
    from einattn.compiler.decode import packing
    packed = packing(kp).index if pack > 1 else None
    grid = math.prod(int(sizes[g]) // (pack if g == packed else 1) for g in kp.grid)
    return grid * -(-int(sizes[kp.query]) // query_block)


def working_set(kp: KernelPlan, cfg: CpuConfig, workload) -> int:
    """Bytes one task touches per key tile: its [BLOCK_N, BLOCK_M] score and map tiles
    (every distinct one, an upper bound: copies are aliased), the K and V rows of the key
    tile, the accumulators and other per-row state, and the query-side score operands."""
    f32, bm = 4, cfg.rows()
    tiles, feat_k, acc, rows, a_ops = set(), 0, 0, 0, 0
    for p in kp.passes:
        for op in p.loop:
            if op.kind in (Kind.SCORE, Kind.MAP):
                tiles.add(op.name)
            elif op.kind is Kind.VALUE:
                acc += bm * workload.size(op.value_index, 1)
                feat_k += workload.size(op.value_index, 1)
            else:
                rows += bm
    for op in kp.scores:
        width = workload.size(op.contract, 1)
        feat_k += width
        a_ops += width * bm
    return f32 * (len(tiles) * bm * cfg.BLOCK_N + cfg.BLOCK_N * feat_k + acc + rows + a_ops)
