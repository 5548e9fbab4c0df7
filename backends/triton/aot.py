"""Ahead-of-time compilation with ``triton.compile`` and the resources of the result.

No GPU is needed: Triton lowers to PTX and assembles a cubin with its bundled
ptxas (CUDA), or to AMDGCN and an hsaco (ROCm). The signature assumes what the
launcher passes for contiguous tensors: 16-byte aligned pointers and unit
last-dim strides (specialised as constants, as Triton's JIT does for a stride
of 1), so the code and its register count are those a real launch compiles.

A split kernel (``KV_SPLITS > 1``) compiles twice: the part kernel and its
combine kernel, which share one signature; the combine's files and resources
come with the part kernel's (``files["combine.<suffix>"]``, ``resources["combine"]``).

Resources: shared memory (LDS) from Triton's metadata; registers and spills
from ``ptxas -v`` on the PTX (CUDA), or from the ``.vgpr_count``,
``.sgpr_count`` and spill fields of the AMDGCN metadata (ROCm).
"""
from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from einattn.ir import BackendUnavailable, UnsupportedError

from einattn.compiler.statistics import keeps_input_dtype

from ..base import INDEX_LIMIT, span
from .abi import constexpr_values, contiguous_stride, dot_precision, output_dtype, tma_usable

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


@dataclass
class CompiledKernel:
    """``files``: suffix -> text or bytes (``ptx``/``cubin`` or ``amdgcn``/``hsaco``, and ``ttgir``)."""
    name: str
    target: str
    files: dict
    resources: dict
    metadata: dict
    compile_seconds: float
    combine: "CompiledKernel | None" = None     # the merge kernel of a split key loop


def signature(artifact, sizes: dict, dtype: torch.dtype, params: dict | None = None):
    """(signature, constexprs, attrs) for ``ASTSource``."""
    r = artifact.rendered
    sig, consts, attrs = {}, {}, {}
    ndim = {t.name: len(t.indices) for t in artifact.plan.cascade.inputs}
    ndim.update({o: len(d) for o, d in r.outputs})
    out_dt = {o: output_dtype(r, d, dtype) for o, d in r.outputs}
    dims = {t.name: t.indices for t in artifact.plan.cascade.inputs}
    dims.update(dict(r.outputs))
    for j, a in enumerate(r.args):
        if a.kind == "workspace":
            sig[a.name] = "*fp32"
            attrs[(j,)] = [["tt.divisibility", 16]]
        elif a.kind == "tiles":
            sig[a.name] = "*i32"
            attrs[(j,)] = [["tt.divisibility", 16]]
        elif a.kind == "tiles_stride":
            sig[a.name] = "i32"
        elif a.kind == "ptr":
            # statistics computed before the kernel (KernelPlan.pre) are float32 at any input dtype
            stat = torch.float32 if any(p.name == a.of and not keeps_input_dtype(p) for p in artifact.plan.pre) \
                else dtype
            sig[a.name] = _PTR[out_dt.get(a.of, stat)]
            attrs[(j,)] = [["tt.divisibility", 16]]
        elif a.kind in ("stride", "size"):
            # what Triton's JIT would specialise for contiguous tensors of these sizes
            v = sizes[a.of] if a.kind == "size" else contiguous_stride(dims[a.of], a.dim, sizes)
            if v == 1:
                sig[a.name] = "constexpr"
                consts[a.name] = 1
            else:
                sig[a.name] = "i64" if v >= INDEX_LIMIT else "i32"      # as Triton's JIT specialises
                if v % 16 == 0:
                    attrs[(j,)] = [["tt.divisibility", 16]]
        else:
            sig[a.name] = "i32" if a.dtype == "i32" else "fp32"
    ce = aot_constexprs(artifact, sizes, dtype, params)
    for k in r.constexprs:
        sig[k] = "constexpr"
        consts[k] = ce[k]
    return sig, consts, attrs


def aot_constexprs(artifact, sizes: dict, dtype: torch.dtype, params: dict | None = None) -> dict:
    """The compile-time constants of an ahead-of-time build: what a launcher of its files must pass
    (TMA assumes contiguous inputs at 16-byte aligned addresses)."""
    r = artifact.rendered
    dims = {t.name: t.indices for t in artifact.plan.cascade.inputs}
    cc = artifact.hardware.compute_capability if artifact.hardware.kind == "cuda" else None
    tma = tma_usable(r, cc, sizes, dims, dtype=dtype)
    return constexpr_values(r, sizes, artifact.config, dot_precision([dtype]), params, tma)


def check_slice_offsets(artifact, sizes: dict) -> None:
    """Offsets inside one (batch, head) slice are 32-bit in the kernel (grid offsets are 64-bit):
    refuse sizes whose contiguous tensors reach past 2**31 elements within a slice."""
    r = artifact.rendered
    dims = {t.name: t.indices for t in artifact.plan.cascade.inputs} | dict(r.outputs)
    for name, ds in dims.items():
        shape = [int(sizes[i]) for i in ds]
        reach = span(shape, [contiguous_stride(ds, j, sizes) for j in range(len(ds))],
                     skip=[j for j, i in enumerate(ds) if i in r.grid])
        if reach >= INDEX_LIMIT:
            raise UnsupportedError(f"tensor '{name}' spans {reach} elements within one ({', '.join(r.grid)}) "
                                   f"slice at these sizes; the {artifact.target} kernel indexes inside a slice "
                                   f"with 32-bit offsets (< 2**31): use shorter sequences per call")


def compile_kernel(fn, artifact, sizes: dict, dtype: torch.dtype, combine=None,
                   params: dict | None = None) -> CompiledKernel:
    """Compile ``fn`` (and ``combine``, the merge kernel of a split artifact, with the same signature)."""
    ck = _compile_one(fn, artifact, sizes, dtype, params)
    if combine is not None:
        cc = _compile_one(combine, artifact, sizes, dtype, params)
        ck.combine = cc
        ck.files.update({f"combine.{k}": v for k, v in cc.files.items()})
        ck.resources["combine"] = dict(cc.resources)
        ck.compile_seconds += cc.compile_seconds
    return ck


def _compile_one(fn, artifact, sizes: dict, dtype: torch.dtype, params: dict | None = None) -> CompiledKernel:
    try:
        import triton
        from triton.compiler import ASTSource
    except ImportError as e:  # pragma: no cover - triton is installed with the GPU extra
        raise BackendUnavailable(f"the Triton backend needs the triton package ({e}); pip install triton==3.9.0") from None
    hw = artifact.hardware
    sig, consts, attrs = signature(artifact, sizes, dtype, params)
    # explicit fp fusion (FMA contraction): Triton 3.9 warns when it falls back to its default
    opts = {"num_warps": artifact.config.num_warps, "num_stages": artifact.config.num_stages,
            "enable_fp_fusion": True}
    t0 = time.perf_counter()
    ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                        target=hw.triton_target, options=opts)
    secs = time.perf_counter() - t0
    asm = dict(ck.asm)
    md = ck.metadata
    meta = {"name": md.name, "shared": int(md.shared), "num_warps": md.num_warps, "num_stages": md.num_stages}
    if hw.kind == "cuda":
        files = {"ptx": asm["ptx"], "cubin": asm["cubin"], "ttgir": asm.get("ttgir", "")}
        res = {"shared_memory": int(md.shared), **ptxas_resources(asm["ptx"], hw.arch, hw.compute_capability)}
    else:
        files = {"amdgcn": asm["amdgcn"], "hsaco": asm["hsaco"], "ttgir": asm.get("ttgir", "")}
        res = {"shared_memory": int(md.shared), **amdgcn_resources(asm["amdgcn"])}
    return CompiledKernel(md.name, f"{hw.kind}:{hw.arch}", files, res, meta, secs)


def ptxas_path(capability: int) -> str:
    """The ptxas Triton itself assembles with for this capability (it bundles two)."""
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(capability).path


def ptxas_resources(ptx: str, arch: str, capability: int) -> dict:
    """Registers and spills from Triton's bundled ptxas (-v); the system ptxas may reject its PTX."""
    m = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M)
    gpu = m.group(1) if m else arch
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        # the flags Triton's own make_cubin passes, so the counts are those of the cubin
        p = subprocess.run([ptxas_path(capability), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
                            str(src), "-o", str(Path(d) / "k.o")],
                           capture_output=True, text=True)
    text = p.stdout + p.stderr
    out: dict = {}
    if (m := re.search(r"Used (\d+) registers", text)):
        out["registers"] = int(m.group(1))
    if (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)):
        out["spill_stores"], out["spill_loads"] = int(m.group(1)), int(m.group(2))
    if (m := re.search(r"(\d+) bytes stack frame", text)):
        out["stack_frame"] = int(m.group(1))
    if p.returncode != 0 or "registers" not in out:
        out["ptxas_error"] = text.strip()[-500:]
    return out


def amdgcn_resources(asm: str) -> dict:
    """VGPRs, SGPRs, AGPRs, spills and LDS from the AMDGCN metadata notes."""
    def field(name):
        m = re.search(rf"\.{name}:\s+(\d+)", asm)
        return int(m.group(1)) if m else None
    out = {"registers": field("vgpr_count"), "sgprs": field("sgpr_count"), "agprs": field("agpr_count"),
           "spill_vgprs": field("vgpr_spill_count"), "spill_sgprs": field("sgpr_spill_count"),
           "static_lds": field("group_segment_fixed_size"), "scratch": field("private_segment_fixed_size")}
    if (m := re.search(r";\s*Occupancy:\s*(\d+)", asm)):
        out["occupancy_waves_per_simd"] = int(m.group(1))
    return {k: v for k, v in out.items() if v is not None}
