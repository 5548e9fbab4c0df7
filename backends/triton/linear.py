"""The chunked linear scan in Triton (``templates/triton/linear_scan.py.jinja``).

The host side (features, chunk-relative decay, ``finish``) is shared with every target
(:mod:`einattn.backends.torch.linear`); this module renders the scan kernels, runs them
(Triton's interpreter on CPU tensors, or a GPU) and compiles them ahead of time.

Two schedules, as :func:`~einattn.backends.torch.linear.scan_torch`:

- ``fused`` (Lightning Attention-2): one program per (slice, e-tile) walks the chunks,
  the fp32 state ``[BLOCK_D, BLOCK_E]`` in registers; per chunk two dots for the
  intra-chunk part ([C, D] x [D, C], then [C, C] x [C, BLOCK_E]), one for the carried
  state ((F * exp(ad)) @ S), one for the update. O(N) work, G x e-tiles programs (each e-tile
  recomputes the [C, C] scores: the price of splitting E' across programs).
- ``materialised`` (flash-linear-attention's chunk form): the same walk only updates and
  stores each chunk's incoming state to an fp32 workspace [G, chunks, D, E'], then one
  program per (slice, chunk, e-tile) computes the outputs in parallel: more programs,
  plus D x E' x 4 bytes of workspace traffic per chunk.

Without a mask (non-causal) the state is ``S0 + K^T V`` over every key, then
``num = F @ S`` over query chunks (in one program, or two kernels when materialised).
"""
from __future__ import annotations

import time

import torch

from einattn.ir import BackendUnavailable, UnsupportedError

from ..base import INDEX_LIMIT, Target, parse_target
from ..torch.linear import ScanInputs
from .abi import dot_precision, next_pow2
from .aot import _PTR, CompiledKernel, amdgcn_resources, ptxas_resources
from .hardware import MAX_HEAD_DIM, load_target
from .loader import interpreting, load_kernel, write_source
from .render import template_source

TEMPLATE = ("triton", "linear_scan.py.jinja")
MASKS = ("none", "causal", "strict")
SCHEDULES = ("fused", "materialised")
CHUNKS = (16, 32, 64, 128)
MAX_BLOCK_E = 64          # default e-tile: a [BLOCK_D, 64] fp32 state per program


def render_scan(mask: str, decay: bool, schedule: str = "fused", has_state: bool = False,
                store_state: bool = True) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``(source, kernel names in launch order, argument names)`` of one scan variant.

    >>> src, kernels, args = render_scan("causal", decay=True, schedule="materialised")
    >>> kernels, "AD_ptr" in args
    (('einattn_linear_states', 'einattn_linear_chunks'), True)
    """
    _check_variant(mask, decay, schedule)
    from jinja2 import Environment, StrictUndefined
    args = ("F_ptr", "K_ptr", "V_ptr", *(("AD_ptr",) if decay else ()), *(("S0_ptr",) if has_state else ()),
            *(("SOUT_ptr",) if store_state else ()), "OUT_ptr",
            *(("WS_ptr",) if schedule == "materialised" else ()), "size_m", "size_n")
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    src = env.from_string(template_source(TEMPLATE)).render(
        SCHEDULE=schedule, MASK=mask, DECAY=decay, HAS_STATE=has_state, STORE_STATE=store_state, args=args)
    kernels = ("einattn_linear_scan",) if schedule == "fused" else ("einattn_linear_states", "einattn_linear_chunks")
    return src, kernels, args


def _check_variant(mask: str, decay: bool, schedule: str, chunk: int = 16) -> None:
    if mask not in MASKS:
        raise UnsupportedError(f"linear scan mask {mask!r}: expected one of {', '.join(MASKS)}")
    if schedule not in SCHEDULES:
        raise UnsupportedError(f"linear scan schedule {schedule!r}: expected 'fused' or 'materialised'")
    if chunk not in CHUNKS:
        raise UnsupportedError(f"linear scan chunk {chunk}: expected one of {', '.join(map(str, CHUNKS))} "
                               f"(the intra-chunk scores are a [chunk, chunk] tl.dot)")
    if decay and mask == "none":
        raise UnsupportedError("a decayed linear scan needs a causal mask (mask 'causal' or 'strict'), got 'none'")


def _blocks(D: int, E: int, block_e: int | None) -> tuple[int, int]:
    block_d = next_pow2(D)
    if block_d > MAX_HEAD_DIM:
        raise UnsupportedError(f"linear scan feature width D = {D}: the Triton kernel holds at most "
                               f"{MAX_HEAD_DIM} features per program; reduce the head dim")
    if block_e is None:
        return block_d, min(next_pow2(E), MAX_BLOCK_E)
    if block_e < 16 or block_e & (block_e - 1):
        raise UnsupportedError(f"block_e = {block_e}: expected a power of two >= 16")
    return block_d, block_e


def scan_triton(x: ScanInputs, mask: str, chunk: int, schedule: str = "fused", state: torch.Tensor | None = None,
                *, interpret: bool = True, block_e: int | None = None, final_state: bool = True,
                num_warps: int = 4, num_stages: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked scan in Triton: ``(num [G, M, E'], final state [G, D, E'])``, as
    :func:`~einattn.backends.torch.linear.scan_torch` computes them.

    ``interpret`` runs the kernels in Triton's interpreter on CPU tensors; otherwise the
    tensors must be on a CUDA/ROCm device. ``block_e``: value columns per program (default
    min(E' padded, 64)). ``final_state=False`` skips storing the state (returned as None).
    F, K and V sharing fp16 (or bf16, on a GPU) are the dots' operands as they are; anything
    else runs in fp32. ``num`` and the state are fp32.
    """
    F, K, V, ad = x.F, x.K, x.V, x.ad
    G, M, D = F.shape
    N, E = K.shape[1], V.shape[-1]
    _check_variant(mask, ad is not None, schedule, chunk)
    if mask != "none" and N != M:
        raise UnsupportedError(f"a causal linear scan needs as many keys as queries (M = {M}, N = {N}); "
                               f"pass the earlier keys as state= instead")
    block_d, block_e = _blocks(D, E, block_e)
    dev = F.device
    if interpret and dev.type != "cpu":
        raise UnsupportedError(f"scan_triton(interpret=True) runs Triton's interpreter on CPU tensors, got {dev}: "
                               f"move the inputs with .cpu() or pass interpret=False")
    if not interpret and dev.type != "cuda":
        raise BackendUnavailable(f"scan_triton(interpret=False) launches on a CUDA/ROCm device, got tensors on "
                                 f"{dev}; pass interpret=True to run Triton's interpreter on the CPU")
    chunks = -(-M // chunk)
    for what, reach in (("F", M * D), ("K", N * D), ("V", N * E), ("the workspace", chunks * D * E)):
        if reach >= INDEX_LIMIT:
            raise UnsupportedError(f"{what} spans {reach} elements in one slice; the linear scan indexes inside a "
                                   f"slice with 32-bit offsets (< 2**31): split the sequence and chain state=")
    F, K, V = _operands(F, K, V, interpret)
    tensors = {"F_ptr": F, "K_ptr": K, "V_ptr": V,
               "OUT_ptr": torch.empty(G, M, E, device=dev, dtype=torch.float32)}
    if ad is not None:
        tensors["AD_ptr"] = _fp32(ad)
    if state is not None:
        tensors["S0_ptr"] = _fp32(state.reshape(G, D, E))
    if final_state:
        tensors["SOUT_ptr"] = torch.empty(G, D, E, device=dev, dtype=torch.float32)
    if schedule == "materialised":
        tensors["WS_ptr"] = torch.empty(G, chunks if mask != "none" else 1, D, E, device=dev, dtype=torch.float32)
    src, kernels, names = render_scan(mask, ad is not None, schedule, state is not None, final_state)
    path = write_source(src)
    args = [tensors.get(a, M if a == "size_m" else N) for a in names]
    consts = dict(SIZE_D=D, SIZE_E=E, BLOCK_D=block_d, BLOCK_E=block_e, CHUNK=chunk,
                  DOT_PRECISION=dot_precision([F.dtype]))
    tiles = -(-E // block_e)
    grids = [(G, tiles)] if schedule == "fused" else [(G, tiles), (G, chunks, tiles)]
    # an empty grid launches nothing (M = 0: the state still passes through the states kernel)
    calls = [(k, g) for k, g in zip(kernels, grids) if min(g) > 0]
    opts = {"num_warps": num_warps, "num_stages": num_stages}
    calls = [(load_kernel(path, k, interpret=interpret), g) for k, g in calls]
    if interpret:
        import numpy as np
        with interpreting(), np.errstate(over="ignore"):      # exp of masked-out weights may overflow
            for fn, grid in calls:
                fn[grid](*args, **consts, **opts)
    else:
        for fn, grid in calls:
            fn[grid](*args, **consts, **opts, enable_fp_fusion=True)
    return tensors["OUT_ptr"], tensors.get("SOUT_ptr")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def _operands(F, K, V, interpret: bool):
    """F, K, V in the dtype of the dots: fp16/bf16 when all three share it (bf16 goes to fp32 in the
    interpreter, whose bf16 tl.dot is wrong in Triton 3.9), else fp32."""
    dt = F.dtype if F.dtype == K.dtype == V.dtype and F.dtype in (torch.float16, torch.bfloat16) else torch.float32
    if interpret and dt == torch.bfloat16:
        dt = torch.float32
    return tuple(t.to(dt).contiguous() for t in (F, K, V))


def compile_scan(target: str, D: int, E: int, chunk: int, mask: str, decay: bool, schedule: str = "fused", *,
                 has_state: bool = False, store_state: bool = True, block_e: int | None = None,
                 dtype: torch.dtype = torch.float16, num_warps: int = 4,
                 num_stages: int = 2) -> dict[str, CompiledKernel]:
    """Compile the scan ahead of time (no GPU needed) for ``target`` ("sm_80", "sm_90", "gfx90a",
    "gfx942", or "cuda:sm_90" / "rocm:gfx942"): ``{kernel name: CompiledKernel}`` in launch order,
    each with ``resources`` (registers, spills, shared memory) read as :mod:`.aot` reads them.

    ``dtype`` is that of F, K, V, the operands of the dots (accumulators, decay, states, workspace
    and output are fp32). The default, fp16, runs the tensor cores, as ``TritonBackend.build``
    defaults to; fp32 dots are "ieee" (:func:`.abi.dot_precision`), which Triton lowers to FMA on
    CUDA: at D = E' = C = 64 that spills heavily (so does the attention kernel), not on ROCm.
    """
    _check_variant(mask, decay, schedule, chunk)
    hw = load_target(_target(target))
    block_d, block_e = _blocks(D, E, block_e)
    src, kernels, names = render_scan(mask, decay, schedule, has_state, store_state)
    path = write_source(src)
    try:
        import triton
        from triton.compiler import ASTSource
    except ImportError as e:  # pragma: no cover - triton is a dependency
        raise BackendUnavailable(f"compiling the linear scan needs triton ({e}); pip install triton==3.9.0") from None
    sig, attrs = {}, {}
    for j, a in enumerate(names):
        if a.endswith("_ptr"):
            sig[a] = _PTR[dtype] if a in ("F_ptr", "K_ptr", "V_ptr") else "*fp32"
            attrs[(j,)] = [["tt.divisibility", 16]]
        else:
            sig[a] = "i32"
    consts = dict(SIZE_D=D, SIZE_E=E, BLOCK_D=block_d, BLOCK_E=block_e, CHUNK=chunk,
                  DOT_PRECISION=dot_precision([dtype]))
    sig.update({k: "constexpr" for k in consts})
    out = {}
    for name in kernels:
        fn = load_kernel(path, name, interpret=False)
        t0 = time.perf_counter()
        ck = triton.compile(ASTSource(fn=fn, signature=dict(sig), constexprs=consts, attrs=attrs),
                            target=hw.triton_target,
                            options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True})
        secs = time.perf_counter() - t0
        asm, md = dict(ck.asm), ck.metadata
        if hw.kind == "cuda":
            files = {"ptx": asm["ptx"], "cubin": asm["cubin"], "ttgir": asm.get("ttgir", "")}
            res = ptxas_resources(asm["ptx"], hw.arch, hw.compute_capability)
        else:
            files = {"amdgcn": asm["amdgcn"], "hsaco": asm["hsaco"], "ttgir": asm.get("ttgir", "")}
            res = amdgcn_resources(asm["amdgcn"])
        res = {"shared_memory": int(md.shared), **res}
        if res["shared_memory"] > hw.shared_memory_per_block:
            raise UnsupportedError(f"linear scan kernel {name} at D={D}, E'={E}, chunk={chunk}, BLOCK_E={block_e} "
                                   f"needs {res['shared_memory']} bytes of shared memory; {hw.name} has "
                                   f"{hw.shared_memory_per_block} per block: use a smaller chunk or block_e")
        meta = {"name": md.name, "shared": int(md.shared), "num_warps": md.num_warps, "num_stages": md.num_stages}
        out[name] = CompiledKernel(md.name, f"{hw.kind}:{hw.arch}", files, res, meta, secs)
    return out


def _target(text: str) -> Target:
    if text.startswith("sm_"):
        return Target("cuda", text)
    if text.startswith("gfx"):
        return Target("rocm", text)
    return parse_target(text)
