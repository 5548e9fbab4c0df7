"""The Triton kernel's tunables and the checks made before and after compiling.

A config is rejected *before* anything is compiled when it cannot fit: block
sizes that are not powers of two, a head dim past what one program holds, a
dtype the target lacks, more threads than a block may have, a shared-memory
estimate past the per-block limit, or accumulators that need more registers
per thread than exist. After compiling, the shared memory Triton reports and
the register count are checked against the same limits.

``TritonConfig.space`` is the search space of one plan, workload and GPU: a
pure function, pruned by these checks before anything compiles.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from einattn.compiler import decode as plan_decode
from einattn.compiler.kernel_plan import Kind, KernelPlan
from einattn.compiler.splits import split_refusal
from einattn.ir import UnsupportedError

from .hardware import MAX_HEAD_DIM, HardwareTarget


@dataclass(frozen=True, slots=True)
class TritonConfig:
    """One config of the Triton kernels.

    ``BLOCK_M``: query rows per program of the tile program; the most rows of a decode row block.
    ``KV_SPLITS``: parts of the key loop (0: chosen per call, 1 for the tile program and
    ``compiler.decode.split_count`` over the target's SMs for the decode program).
    ``PROGRAM``: "tile", "decode" or "auto" (``compiler.decode.choose_program`` per call).
    ``PACK``: heads per decode row block (0: ``compiler.decode.pack_size`` per call).
    """
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2
    KV_SPLITS: int = 0
    PROGRAM: str = "auto"
    PACK: int = 0

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def validate(self, hw: HardwareTarget, kp: KernelPlan | None = None, workload=None) -> dict:
        """Raise :class:`UnsupportedError` when this config cannot run ``kp`` at ``workload`` on ``hw``.

        The checks of :func:`check_config` (block sizes, threads, dtype, head dims, shared memory and
        register estimates: the plan and sizes are those of ``kp`` and ``workload`` when given) and the
        split's: ``KV_SPLITS > 1`` needs a one-pass plan and no more parts than the workload has key
        tiles. Returns the resource estimates (:func:`estimate`).
        """
        where = f"target {hw.kind}:{hw.arch} ({hw.name})"
        if self.KV_SPLITS > 1 and kp is not None and (why := split_refusal(kp)) is not None:
            raise UnsupportedError(f"KV_SPLITS={self.KV_SPLITS}: {why}; use KV_SPLITS=1")
        sizes = workload.as_dict() if workload is not None else None
        dtype = workload.dtype if workload is not None else None
        if self.PROGRAM == "tile" and self.PACK > 1:
            raise UnsupportedError(f"PACK={self.PACK} with PROGRAM='tile': only the decode program packs heads; "
                                   f"use PROGRAM='decode' or PACK=1")
        if self.KV_SPLITS > 1 and kp is not None and sizes and kp.key in sizes:
            tiles = -(-sizes[kp.key] // self.BLOCK_N)
            if self.KV_SPLITS > tiles:
                raise UnsupportedError(f"KV_SPLITS={self.KV_SPLITS} on {where}: the {sizes[kp.key]} keys make only "
                                       f"{tiles} tiles of BLOCK_N={self.BLOCK_N}, so some parts would have none; "
                                       f"use KV_SPLITS <= {tiles} or a smaller BLOCK_N")
        if kp is None:
            return {}
        return check_config(kp, self, hw, sizes=sizes, dtype=dtype)

    @classmethod
    def space(cls, kp: KernelPlan, workload, hw: HardwareTarget, params: dict | None = None) -> list["TritonConfig"]:
        """Every config worth trying for ``kp`` at ``workload`` on ``hw``: the default as it resolves at
        this workload first, then a deterministic order, each one explicit (``PROGRAM``, ``PACK`` and
        ``KV_SPLITS`` set) and passing :meth:`validate` (nothing is compiled).

        Tile program: BLOCK_M in {16, 32, 64, 128} (only up to the padded query length, so decoding
        shapes keep small tiles), BLOCK_N in {16, 32, 64, 128}, num_warps in {2, 4, 8}, num_stages in
        {1, 2, 3, 4} on NVIDIA and {1, 2} on AMD. KV_SPLITS in {1, 2, 4, 8, 16} (not past the key
        tiles) only when the plan has one pass and the unsplit programs (grid x query tiles) fill
        fewer than two waves of one program per SM; otherwise 1. Decode program (query lengths up to
        ``compiler.decode.DECODE_MAX_ROWS`` only): PACK in the divisors of the group that
        ``pack_size`` allows, BLOCK_M the smallest row block that holds PACK x query rows, BLOCK_N
        in {16, 32, 64, 128}, num_warps in {2, 4, 8}, num_stages 2 and 3 on NVIDIA ({1, 2} on AMD),
        KV_SPLITS as above. Shared-memory, register and dtype estimates prune the rest. At head dim
        128 in fp16 a decode workload of one softmax head group keeps about 320 configs on an H100.
        """
        sizes = workload.as_dict()
        m = sizes.get(kp.query, 1)
        progs = 1
        for g in kp.grid:
            progs *= sizes.get(g, 1)
        m_pad = _block(m)
        block_m = [b for b in (16, 32, 64, 128) if b <= max(16, m_pad)]
        stages = (1, 2) if hw.kind != "cuda" else (1, 2, 3, 4)
        can_split = split_refusal(kp) is None and progs * -(-m // min(block_m)) < 2 * hw.sms
        splits = (1, 2, 4, 8, 16) if can_split else (1,)
        cands = [cls(bm, bn, w, s, k, "tile", 1) for k in splits for bm in block_m for bn in (16, 32, 64, 128)
                 for w in (2, 4, 8) for s in stages]
        params = _params(kp, sizes, params)
        if m <= plan_decode.DECODE_MAX_ROWS and kp.query in sizes:
            pk = plan_decode.packing(kp)
            top = plan_decode.pack_size(pk, sizes, params)
            packs = [p for p in range(1, top + 1) if top % p == 0 and plan_decode.pack_refusal(kp, p, sizes, params)
                     is None]
            dstages = (1, 2) if hw.kind != "cuda" else (2, 3)
            cands = [cls(decode_rows(m, 128, p)[1], bn, w, s, k, "decode", p) for k in splits for p in packs
                     for bn in (16, 32, 64, 128) for w in (2, 4, 8) for s in dstages] + cands
        default = resolve(kp, cls(), sizes, params, hw)[0] if kp.query in sizes else cls(PROGRAM="tile", PACK=1,
                                                                                           KV_SPLITS=1)
        out, seen = [], set()
        for c in [default] + cands:
            if c in seen:
                continue
            seen.add(c)
            try:
                c.validate(hw, kp, workload)
            except UnsupportedError:
                continue
            out.append(c)
        return out


def _params(kp: KernelPlan, sizes: dict, params: dict | None) -> dict:
    """The spec params at ``sizes`` (``params`` given, the rest from their expressions)."""
    from ..base import complete_params
    try:
        return complete_params(kp.cascade, sizes, dict(params or {}))
    except Exception:       # a size the params need is missing: nothing packs
        return dict(params or {})


def parse_config(config: dict | None, hw: HardwareTarget) -> TritonConfig:
    allowed = TritonConfig.__slots__
    for k, v in (config or {}).items():
        if k not in allowed:
            raise UnsupportedError(f"config key {k!r} is not understood by the Triton backend; it accepts: "
                                   f"{', '.join(allowed)}")
        if k == "PROGRAM":
            if not isinstance(v, str) or v not in plan_decode.PROGRAMS:
                raise UnsupportedError(f"config PROGRAM={v!r} for the Triton backend must be one of "
                                       f"{', '.join(map(repr, plan_decode.PROGRAMS))}")
            continue
        low = 0 if k in ("KV_SPLITS", "PACK") else 1     # 0: chosen per call
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            what = "a non-negative integer (0: chosen per call)" if low == 0 else "a positive integer"
            raise UnsupportedError(f"config {k}={v!r} for the Triton backend must be {what}")
    return TritonConfig(**(config or {}))


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def _block(x: int) -> int:
    return max(16, 1 << max(0, math.ceil(math.log2(max(x, 1)))))


def dtype_bytes(dtype) -> int:
    return 4 if str(dtype).endswith("float32") else 8 if str(dtype).endswith("float64") else 2


def estimate(kp: KernelPlan, cfg: TritonConfig, sizes: dict | None, dtype, hw: HardwareTarget) -> dict:
    """Lower-bound resource estimates of one program (bytes of shared memory, fp32 registers per thread).

    Shared memory follows Triton 3.9's software pipeline, checked against the
    compiled ``metadata.shared`` at 64x64 and 128x64 tiles: ``num_stages`` key/value
    buffers on NVIDIA (plus the query tiles on sm_90+, where wgmma reads its A
    operand from shared memory), ``num_stages - 1`` on AMD (the stream pipeliner
    keeps one stage in registers). Registers: the fp32 accumulators and two live
    score tiles spread over the program's threads.
    """
    nb = dtype_bytes(dtype) if dtype is not None else 2
    scores = {op.query_read: op for p in kp.passes for op in p.loop if op.kind is Kind.SCORE}
    kb = {op.key_read: op for p in kp.passes for op in p.loop if op.kind is Kind.SCORE}
    vals = {op.value_read: op for p in kp.passes for op in p.loop if op.kind is Kind.VALUE}
    accs = {op.name: op.value_index for p in kp.passes for op in p.loop if op.kind is Kind.VALUE}
    dims = {i: _block(sizes[i]) if sizes and i in sizes else 16 for i in (*kp.contract, *kp.value)}
    q_bytes = sum(cfg.BLOCK_M * dims[op.contract] for op in scores.values()) * nb
    kv_bytes = cfg.BLOCK_N * (sum(dims[op.contract] for op in kb.values())
                              + sum(dims[op.value_index] for op in vals.values())) * nb
    if hw.kind == "cuda":
        smem = cfg.num_stages * kv_bytes + (q_bytes if (hw.compute_capability or 0) >= 90 else 0)
    else:
        smem = max(1, cfg.num_stages - 1) * kv_bytes
    threads = cfg.num_warps * hw.warp_size
    regs = (cfg.BLOCK_M * sum(dims[e] for e in accs.values()) + 2 * cfg.BLOCK_M * cfg.BLOCK_N) / threads
    return {"shared_memory": int(smem), "registers_per_thread": int(math.ceil(regs)), "dims": dims}


def check_config(kp: KernelPlan, cfg: TritonConfig, hw: HardwareTarget, sizes: dict | None, dtype) -> dict:
    """Reject what cannot fit ``hw`` before compiling; returns the estimates."""
    where = f"target {hw.kind}:{hw.arch} ({hw.name})"
    for k in ("BLOCK_M", "BLOCK_N"):
        v = getattr(cfg, k)
        if not _pow2(v) or v < 16:
            raise UnsupportedError(f"{k}={v} on {where}: must be a power of two >= 16 (tl.dot tiles); "
                                   f"try {max(16, 1 << (max(v, 1).bit_length() - 1))}")
    if not _pow2(cfg.num_warps):
        raise UnsupportedError(f"num_warps={cfg.num_warps} on {where}: must be a power of two")
    threads = cfg.num_warps * hw.warp_size
    if threads > hw.max_threads_per_block:
        raise UnsupportedError(f"num_warps={cfg.num_warps} on {where}: {threads} threads (warp size "
                               f"{hw.warp_size}) exceed the limit of {hw.max_threads_per_block} per block; use "
                               f"num_warps <= {hw.max_threads_per_block // hw.warp_size}")
    if dtype is not None:
        name = str(dtype).replace("torch.", "")
        if name not in hw.dtypes:
            raise UnsupportedError(f"dtype {name} is not supported on {where}; it supports "
                                   f"{', '.join(hw.dtypes)}")
    if sizes:
        for i in (*kp.contract, *kp.value):
            if i in sizes and _block(sizes[i]) > MAX_HEAD_DIM:
                raise UnsupportedError(f"head dim {i}={sizes[i]} on {where}: one program holds at most "
                                       f"{MAX_HEAD_DIM} (padded to a power of two); split the head dim")
    est = estimate(kp, cfg, sizes, dtype, hw)
    if est["shared_memory"] > hw.shared_memory_per_block:
        raise UnsupportedError(
            f"config BLOCK_M={cfg.BLOCK_M}, BLOCK_N={cfg.BLOCK_N}, num_stages={cfg.num_stages} needs at least "
            f"{est['shared_memory']} bytes of shared memory per block on {where}; the limit is "
            f"{hw.shared_memory_per_block} bytes: lower BLOCK_N, BLOCK_M or num_stages")
    if est["registers_per_thread"] > hw.max_registers_per_thread:
        raise UnsupportedError(
            f"config BLOCK_M={cfg.BLOCK_M}, BLOCK_N={cfg.BLOCK_N}, num_warps={cfg.num_warps} needs at least "
            f"{est['registers_per_thread']} fp32 registers per thread for the accumulators and score tiles on "
            f"{where}; the limit is {hw.max_registers_per_thread}: lower BLOCK_M or BLOCK_N, or raise num_warps")
    return est


def check_compiled(res: dict, hw: HardwareTarget, cfg: TritonConfig) -> None:
    """The compiled kernel's own numbers against the target's limits."""
    where = f"target {hw.kind}:{hw.arch} ({hw.name})"
    if res.get("shared_memory", 0) > hw.shared_memory_per_block:
        raise UnsupportedError(
            f"the compiled kernel uses {res['shared_memory']} bytes of shared memory on {where}, over the limit "
            f"of {hw.shared_memory_per_block} per block (config {cfg.to_json()}): lower num_stages or BLOCK_N")
    regs = res.get("registers")
    if regs is not None and regs > hw.max_registers_per_thread:
        raise UnsupportedError(f"the compiled kernel uses {regs} registers per thread on {where}, over the "
                               f"limit of {hw.max_registers_per_thread}")


# -- the config of one call (the decode program's choices: compiler/decode.py) ----------

def decode_rows(m: int, cap: int, pack: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_M) of the decode program: query rows per head (``query_block(m)``, at most
    ``cap // pack``) and rows of the row block (``pack * BLOCK_Q`` rounded up to a power of two >= 16:
    ``tl.dot``'s minimum and ``tl.arange``'s rule)."""
    q = max(1, min(plan_decode.query_block(m), cap // max(pack, 1)))
    return q, max(16, plan_decode.query_block(pack * q))


def grid_size(kp: KernelPlan, sizes: dict) -> int:
    out = 1
    for g in kp.grid:
        out *= int(sizes[g])
    return out


def resolve(kp: KernelPlan, cfg: TritonConfig, sizes: dict, params: dict,
            hw: HardwareTarget) -> tuple[TritonConfig, str]:
    """The concrete config a call at ``sizes`` runs (``PROGRAM`` "tile" or "decode", ``PACK`` and
    ``KV_SPLITS`` >= 1) and why that program. Keys the config sets are kept; a ``PACK`` that the
    plan cannot honour raises :class:`UnsupportedError`. Without the query length (sizes of head
    dims only) "auto" means the tile program."""
    if kp.query not in sizes:
        if cfg.PROGRAM == "decode":
            raise UnsupportedError(f"PROGRAM='decode' needs the query length '{kp.query}' in the sizes "
                                   f"(its row block depends on it); sizes given: {sorted(sizes)}")
        sizes = {**sizes, kp.query: plan_decode.DECODE_MAX_ROWS + 1}
    # block-sparse key loops run in the tile program only on Triton (backends/tiles.py)
    choice = plan_decode.choose_program(kp, sizes, "tile" if kp.tile_lists and cfg.PROGRAM == "auto"
                                        else cfg.PROGRAM)
    if choice.program == "tile":
        if cfg.PACK > 1:
            raise UnsupportedError(f"PACK={cfg.PACK} with PROGRAM={cfg.PROGRAM} at {kp.query}={sizes[kp.query]}: "
                                   f"only the decode program packs heads ({choice.why}); use PROGRAM='decode' "
                                   f"or leave PACK unset")
        why = choice.why if not (kp.tile_lists and cfg.PROGRAM == "auto") else \
            "a block-sparse key loop runs in the tile program on Triton"
        return dataclasses.replace(cfg, PROGRAM="tile", PACK=1, KV_SPLITS=max(1, cfg.KV_SPLITS)), why
    m = int(sizes[kp.query])
    pack = cfg.PACK
    if pack == 0:
        limit = min(plan_decode.MAX_PACK, max(1, cfg.BLOCK_M // plan_decode.query_block(m)))
        pack = plan_decode.pack_size(plan_decode.packing(kp), sizes, params, limit)
    elif (why := plan_decode.pack_refusal(kp, pack, sizes, params)) is not None:
        raise UnsupportedError(f"config {why}")
    if pack > cfg.BLOCK_M:
        raise UnsupportedError(f"PACK={pack} heads need a row block of at least {pack} rows; BLOCK_M={cfg.BLOCK_M} "
                               f"bounds it: raise BLOCK_M to {1 << (pack - 1).bit_length()} or lower PACK")
    splits = cfg.KV_SPLITS
    if splits == 0:
        q, _ = decode_rows(m, cfg.BLOCK_M, pack)
        tasks = -(-m // q) * -(-grid_size(kp, sizes) // pack)
        splits = plan_decode.split_count(kp, tasks, hw.sms, -(-int(sizes[kp.key]) // cfg.BLOCK_N))
    elif splits > 1 and (why := split_refusal(kp)) is not None:
        raise UnsupportedError(f"config KV_SPLITS={splits}: {why}; use KV_SPLITS=1")
    return dataclasses.replace(cfg, PROGRAM="decode", PACK=pack, KV_SPLITS=splits), choice.why
