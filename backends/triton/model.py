"""A performance model of the Triton kernel: ranks configs without a GPU.

``predict`` is a roofline with occupancy and a tail effect. It is meant to
order the configs of one spec and workload on one target, not to forecast
absolute times: every constant below is a round figure, and the same figures
apply to every config, so errors shared by all configs cancel in the ranking.

- Work. FLOPs of the score contractions (``2 * m * n * d`` each) and of the
  value contractions (``2 * m * n * e`` each) of every pass, per (grid) slice,
  at the *padded* sizes a program computes: query rows rounded up to BLOCK_M,
  keys to BLOCK_N, head dims to powers of two (so a 64-row tile for a one-row
  decoding query costs 64 rows). Masks are ignored: every key tile counts,
  which overstates causal and windowed specs alike for every config.
- Bytes. Inputs without the key index (Q...) and outputs once; inputs with the
  key but not the query index (K, V) once per query block and grid slice (under GQA
  each query head reads its KV head) (a split part reads
  only its share, so the split does not change this); inputs with both
  (a bias [m, n]) once; for ``KV_SPLITS > 1`` the fp32 workspace written by the
  parts and read back by the combine kernel. There is no cache model: the
  re-reads of K and V by the query blocks all count at memory bandwidth (on a
  GPU many hit L2), so long-query workloads come out memory-bound more often
  than they are; the ranking still favours what cuts that traffic (larger BLOCK_M).
- The decode program (``PROGRAM="decode"``): a program computes one row block of
  ``PACK`` heads x ``BLOCK_Q`` query rows padded to ``BLOCK_M`` rows (the FLOPs count
  the padded rows), and reads each K/V slice (the tensor's non-grid extent) once per
  row block: ``query blocks x grid slices / PACK`` times, so packing the heads of a
  GQA group divides the K/V traffic by ``PACK``.
- Occupancy. Programs resident per SM from the threads, registers and shared
  memory of one program: the compiled kernel's (``resources`` from the
  ahead-of-time build) when given, else :func:`config.estimate` (registers
  plus ``BASE_REGISTERS`` for addresses and indices).
- Time. Programs run in ``waves = ceil(programs / (sms * occupancy))``; a
  wave of k programs gets the fraction ``min(1, k / sms) * hide`` of the peak
  FLOP rate and of the memory bandwidth, ``hide = min(1, warps per SM /
  HIDE_WARPS)`` (too few warps cannot hide memory and pipeline latency). Each
  wave takes the larger of its compute and memory times; a split adds one
  launch (``LAUNCH_SECONDS``) for the combine kernel.

The model is deterministic: the same arguments give the same dict.
"""
from __future__ import annotations

import math

from einattn.compiler import decode as plan_decode
from einattn.compiler.kernel_plan import Kind, KernelPlan

from .config import TritonConfig, dtype_bytes, estimate
from .hardware import HardwareTarget

MODEL = "roofline+occupancy/1"
FP32_OF_FP16 = 1 / 16        # fp32 "ieee" dots run on the FMA units: ~1/16 of the fp16 tensor-core peak (H100)
MAX_THREADS_PER_SM = 2048    # resident threads per SM (NVIDIA sm_80/90/100) or per CU (AMD: 32 wave64)
MAX_PROGRAMS_PER_SM = 32     # resident blocks per SM
BASE_REGISTERS = 32          # per thread, beyond the accumulators and score tiles: addresses, indices, masks
HIDE_WARPS = 8               # warps per SM that hide memory and pipeline latency
LAUNCH_SECONDS = 3e-6        # one more kernel launch (the combine kernel of a split)


def _pad(x: int, b: int) -> int:
    return -(-x // b) * b


def _pow2(x: int) -> int:
    return max(16, 1 << max(0, math.ceil(math.log2(max(x, 1)))))


def peak_flops(hw: HardwareTarget, dtype: str) -> float:
    """The dot products' peak FLOP/s of ``hw`` for inputs of ``dtype`` ("float16", ...)."""
    if dtype == "bfloat16":
        return hw.peak_flops_bf16
    if dtype == "float16":
        return hw.peak_flops_fp16
    return hw.peak_flops_fp16 * FP32_OF_FP16


def occupancy(cfg: TritonConfig, hw: HardwareTarget, shared_memory: int, registers: int) -> int:
    """Programs resident per SM (at least 1: a config that fits one block runs)."""
    threads = cfg.num_warps * hw.warp_size
    limits = [MAX_THREADS_PER_SM // threads, MAX_PROGRAMS_PER_SM,
              hw.registers_per_sm // max(1, registers * threads)]
    if shared_memory > 0:
        limits.append(hw.shared_memory_per_sm // shared_memory)
    return max(1, min(limits))


def work(kp: KernelPlan, cfg: TritonConfig, workload) -> dict:
    """FLOPs, bytes and programs of one launch at ``workload`` (see the module docstring)."""
    if cfg.PROGRAM == "decode":
        return decode_work(kp, cfg, workload)
    sizes = workload.as_dict()
    m = sizes.get(kp.query, 1)
    slices = 1
    for g in kp.grid:
        slices *= sizes.get(g, 1)
    q_blocks = -(-m // cfg.BLOCK_M)
    # rows: the padded query rows of one slice; a split's workspace holds the m real rows
    return _launch(kp, cfg, sizes, workload.dtype, rows=_pad(m, cfg.BLOCK_M), row_sets=slices,
                   programs=q_blocks * slices, ws_rows=m * slices)


def _launch(kp: KernelPlan, cfg: TritonConfig, sizes: dict, dtype, rows: int, row_sets: int, programs: int,
            ws_rows: int) -> dict:
    """The totals of ``programs`` programs computing ``row_sets`` sets of ``rows`` rows against the
    padded keys: the score and P.V FLOPs, the inputs (``input_bytes``), outputs and split workspace."""
    np_ = _pad(sizes.get(kp.key, 1), cfg.BLOCK_N)
    flops = 0
    for p in kp.passes:
        for op in p.loop:
            if op.kind is Kind.SCORE:
                flops += 2 * rows * np_ * _pow2(sizes.get(op.contract, 16))
            elif op.kind is Kind.VALUE:
                flops += 2 * rows * np_ * _pow2(sizes.get(op.value_index, 16))
    flops *= row_sets
    nb = dtype_bytes(dtype)
    nbytes = input_bytes(kp, sizes, nb, programs)
    for _, dims in kp.outputs:
        elems = 1
        for i in dims:
            elems *= sizes.get(i, 1)
        nbytes += elems * nb
    ws = 0
    if cfg.KV_SPLITS > 1:
        width = sum(_pow2(sizes.get(op.value_index, 16)) if op.kind is Kind.VALUE else 1
                    for op in kp.passes[-1].state)
        ws = 2 * 4 * cfg.KV_SPLITS * ws_rows * width
    return {"flops": flops, "bytes": nbytes + ws, "workspace_bytes": ws,
            "programs": programs * max(1, cfg.KV_SPLITS)}     # KV_SPLITS 0: unsplit


def input_bytes(kp: KernelPlan, sizes: dict, nb: int, blocks: int) -> int:
    """Bytes of the inputs read by ``blocks`` programs: a tensor with the key but not the query index
    its slice (the dims its reads do not subscript by a grid index: n x d of K[b, h // r, n, d])
    once per program, every other input once."""
    sliced = {}
    for e in plan_decode.key_side_reads(kp):
        decl = kp.cascade.input(e.arg[0])
        sliced[e.arg[0]] = {decl.indices[j] for j, s in enumerate(e.arg[1]) if s.index in kp.grid}
    out = 0
    for t in kp.cascade.inputs:
        whole = per_slice = 1
        for i in t.indices:
            whole *= sizes.get(i, 1)
            if i not in kp.grid and i not in sliced.get(t.name, ()):
                per_slice *= sizes.get(i, 1)
        shared = kp.key in t.indices and kp.query not in t.indices
        out += (per_slice * blocks if shared else whole) * nb
    return out


def decode_work(kp: KernelPlan, cfg: TritonConfig, workload) -> dict:
    """``work`` of the decode program (a resolved config: PACK and KV_SPLITS >= 1)."""
    from .config import decode_rows
    from .decode import launch_grid
    assert cfg.PACK >= 1 and cfg.KV_SPLITS >= 1, "a resolved config (config.resolve)"
    sizes = workload.as_dict()
    m = sizes.get(kp.query, 1)
    _, rows = decode_rows(m, cfg.BLOCK_M, cfg.PACK)
    g0, g1 = launch_grid(kp, cfg, {**{g: 1 for g in kp.grid}, **sizes, kp.query: m})
    blocks = g0 * g1
    return _launch(kp, cfg, sizes, workload.dtype, rows=rows, row_sets=blocks, programs=blocks,
                   ws_rows=blocks * rows)


def predict(kp: KernelPlan, cfg: TritonConfig, workload, hw: HardwareTarget, resources: dict | None = None) -> dict:
    """Predicted time of one launch of ``kp`` with ``cfg`` at ``workload`` on ``hw``.

    Args:
        kp: the kernel plan.
        cfg: the config.
        workload: a :class:`einattn.backends.base.Workload` (index sizes, dtype).
        hw: the GPU.
        resources: the compiled kernel's ``shared_memory`` and ``registers`` (``CompiledKernel.resources``);
            without them, :func:`config.estimate`'s.

    Returns:
        ``seconds``, ``model`` (name/version), ``bound`` ("compute" | "memory"), ``occupancy``
        (programs per SM), ``waves``, ``programs``, ``flops``, ``bytes``, ``compute_seconds``,
        ``memory_seconds`` and ``resources`` ("compiled" | "estimated").

    >>> from einattn.backends.base import Workload
    >>> from einattn.backends.triton.hardware import all_targets
    >>> from einattn.compiler import make_plan
    >>> from einattn.compiler.kernel_plan import make_kernel_plan
    >>> from einattn.specs import load_spec
    >>> kp = make_kernel_plan(make_plan(load_spec("softmax")))
    >>> w = Workload.of({"b": 1, "h": 8, "m": 1, "n": 8192, "d": 64, "e": 64}, "float16")
    >>> h100 = next(t for t in all_targets() if t.name == "H100")
    >>> one = predict(kp, TritonConfig(16, 64), w, h100)["seconds"]
    >>> split = predict(kp, TritonConfig(16, 64, KV_SPLITS=16), w, h100)["seconds"]
    >>> split < one
    True
    """
    w = work(kp, cfg, workload)
    if resources and "registers" in resources and "shared_memory" in resources:
        smem, regs, source = int(resources["shared_memory"]), int(resources["registers"]), "compiled"
    else:
        est = estimate(kp, cfg, workload.as_dict(), workload.dtype, hw)
        smem, regs, source = est["shared_memory"], est["registers_per_thread"] + BASE_REGISTERS, "estimated"
    occ = occupancy(cfg, hw, smem, regs)
    programs = max(1, w["programs"])
    slots = hw.sms * occ
    waves = -(-programs // slots)
    peak, bw = peak_flops(hw, workload.dtype), hw.memory_bandwidth
    flops_p, bytes_p = w["flops"] / programs, w["bytes"] / programs
    seconds = t_compute = t_memory = 0.0
    for k in [slots] * (waves - 1) + [programs - (waves - 1) * slots]:
        per_sm = -(-k // hw.sms)
        share = min(1.0, k / hw.sms) * min(1.0, per_sm * cfg.num_warps / HIDE_WARPS)
        tc, tm = k * flops_p / (peak * share), k * bytes_p / (bw * share)
        t_compute, t_memory = t_compute + tc, t_memory + tm
        seconds += max(tc, tm)
    if cfg.KV_SPLITS > 1:
        seconds += LAUNCH_SECONDS
    return {"seconds": seconds, "model": MODEL, "bound": "compute" if t_compute >= t_memory else "memory",
            "occupancy": occ, "waves": waves, "programs": programs, "flops": w["flops"], "bytes": w["bytes"],
            "compute_seconds": t_compute, "memory_seconds": t_memory, "resources": source,
            "shared_memory": smem, "registers": regs}
