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
from einattn.compiler.splits import split_refusal
from einattn.ir import UnsupportedError

from .host import CacheSizes, HostCpu, read_cache_sizes

RESERVED_REGISTERS = 4        # a register tile leaves these for its operands (broadcast, loads)
MAX_KV_SPLITS = 64


@dataclass(frozen=True, slots=True)
class CpuConfig:
    """Tunables of the CPU kernel (all positive ints; see the template's header).

    ``BLOCK_M`` query rows per task, ``BLOCK_N`` keys per streamed tile,
    ``SCORE_RJ`` x ``SCORE_RI`` the keys x queries of one score register tile,
    ``PV_RM`` x ``PV_E`` the query rows x value columns of one P.V register tile,
    ``KV_SPLITS`` the parts the key loop of one row block is split into, run in
    parallel and merged (``compiler/splits.py``; 1: no split).
    The defaults keep 16 AVX-512 accumulators per register tile.
    """
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    SCORE_RJ: int = 4
    SCORE_RI: int = 64
    PV_RM: int = 4
    PV_E: int = 64
    KV_SPLITS: int = 1

    @staticmethod
    def keys() -> dict[str, type]:
        return {f.name: int for f in dataclasses.fields(CpuConfig)}

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def check(self, vec: int) -> None:
        """The rules the template needs to render a correct kernel, with what to change."""
        rules = [
            (self.SCORE_RI % vec == 0, f"SCORE_RI={self.SCORE_RI} must be a multiple of the vector width {vec}"),
            (self.BLOCK_M % self.SCORE_RI == 0, f"BLOCK_M={self.BLOCK_M} must be a multiple of SCORE_RI={self.SCORE_RI}"),
            (self.BLOCK_N % self.SCORE_RJ == 0, f"BLOCK_N={self.BLOCK_N} must be a multiple of SCORE_RJ={self.SCORE_RJ}"),
            (self.BLOCK_M % self.PV_RM == 0, f"BLOCK_M={self.BLOCK_M} must be a multiple of PV_RM={self.PV_RM}"),
            (self.BLOCK_M <= 1024 and self.BLOCK_N <= 1024, "BLOCK_M and BLOCK_N must be <= 1024"),
            (1 <= self.KV_SPLITS <= MAX_KV_SPLITS, f"KV_SPLITS={self.KV_SPLITS} must be in 1..{MAX_KV_SPLITS}"),
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
        for tile, acc, fix in (("score", self.SCORE_RJ * self.SCORE_RI // vec, "SCORE_RJ or SCORE_RI"),
                               ("P.V", self.PV_RM * -(-self.PV_E // vec), "PV_RM or PV_E")):
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
        Size: at most 4 x 4 x 3 x 3 = 144 unsplit candidates (long queries, wide values), about
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
            out.append(CpuConfig(bm, bn, rj, ri, rm, pe, s))
        default = CpuConfig.default(host)
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


def working_set(kp: KernelPlan, cfg: CpuConfig, workload) -> int:
    """Bytes one task touches per key tile: its [BLOCK_N, BLOCK_M] score and map tiles
    (every distinct one, an upper bound: copies are aliased), the K and V rows of the key
    tile, the accumulators and other per-row state, and the query-side score operands."""
    f32 = 4
    tiles, feat_k, acc, rows, a_ops = set(), 0, 0, 0, 0
    for p in kp.passes:
        for op in p.loop:
            if op.kind in (Kind.SCORE, Kind.MAP):
                tiles.add(op.name)
            elif op.kind is Kind.VALUE:
                acc += cfg.BLOCK_M * workload.size(op.value_index, 1)
                feat_k += workload.size(op.value_index, 1)
            else:
                rows += cfg.BLOCK_M
    for op in kp.scores:
        width = workload.size(op.contract, 1)
        feat_k += width
        a_ops += width * cfg.BLOCK_M
    return f32 * (len(tiles) * cfg.BLOCK_M * cfg.BLOCK_N + cfg.BLOCK_N * feat_k + acc + rows + a_ops)
