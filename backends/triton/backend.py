"""The CUDA and ROCm backends on Triton: render, compile ahead of time, launch.

``prepare`` renders the kernel plan through ``templates/triton/attention.py.jinja``
and checks the config against the target's limits (``backends/triton/targets/*.yaml``)
before anything is compiled. The source is written to
``<cache_dir>/triton/<hash>.py`` and imported, since ``@triton.jit`` needs a
file. Two imports of the same file can coexist: the ahead-of-time one (a
``JITFunction``, for ``triton.compile`` and real GPUs) and the interpreted one
(loaded with Triton's interpreter switched on, because ``@triton.jit`` reads it
when it decorates), which runs the same kernel on CPU tensors.

``build(artifact, sizes, dtype)`` compiles for the target's architecture
(PTX + cubin, or AMDGCN + hsaco) and reads the resources; ``launch`` runs the
kernel on a visible GPU of the target's kind, in the interpreter when asked,
and otherwise raises :class:`BackendUnavailable` saying how to run it.

``KV_SPLITS = S > 1`` (one-pass plans, ``compiler.splits``) launches S programs per
row block, each over its own part of the keys, then a combine kernel that merges
their fp32 states from a workspace and stores the outputs.

Two programs (``PROGRAM``): the tile program (query tiles of BLOCK_M rows) and the
decode program (``backends/triton/decode.py``: the rows of PACK heads that read the
same K/V rows packed into one row block). With "auto" (the default) each call takes
the one ``compiler.decode.choose_program`` names for its query length; ``PACK`` and
``KV_SPLITS`` left at 0 are chosen per call (:func:`config.resolve`). Each program is
rendered once per artifact, when a call first needs it. ``space``,
``default_config`` and ``model_time`` serve the tuner: the configs worth trying
(nothing compiled) and a predicted time from the compiled kernel's resources
(``model.predict``).

>>> import einattn, torch
>>> k = einattn.compile("causal", target="cuda", interpret=True, config={"BLOCK_M": 16, "BLOCK_N": 16})
>>> q = torch.randn(1, 2, 20, 16)
>>> k(q, q, q).shape
torch.Size([1, 2, 20, 16])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from einattn.compiler.capabilities import Capabilities, check_capabilities
from einattn.compiler.decode import pack_refusal, packing
from einattn.compiler.kernel_plan import KernelPlan, make_kernel_plan
from einattn.compiler.splits import split_refusal
from einattn.ir import BackendUnavailable, EinattnError, UnsupportedError

from ..base import (INDEX_LIMIT, Target, Workload, complete_params, dot_dtype, hidden_nonfinite, span,
                    with_statistics)
from .abi import constexpr_values, dot_precision, output_dtype, tma_usable, workspace_shapes
from .aot import check_slice_offsets, compile_kernel
from .config import TritonConfig, _params, check_compiled, check_config, parse_config
from .config import resolve
from .decode import describe_program, launch_grid, render_program
from .decode import workspace_shapes as decode_workspace_shapes
from .hardware import HardwareTarget, load_target
from .loader import interpreting, load_kernel, write_source
from .model import predict
from .render import Rendered, template_hash

MAX_VALUE_WIDTHS = 4      # one [BLOCK_M, BLOCK_e] accumulator each (counted by config.estimate); tested with 2

@dataclass
class TritonArtifact:
    """What ``prepare`` returns: the rendered kernel and what it was checked against."""
    plan: KernelPlan
    rendered: Rendered
    target: Target
    hardware: HardwareTarget
    config: TritonConfig
    interpret: bool
    path: Path
    compiled: dict = field(default_factory=dict)     # (constexprs, dtypes) -> CompiledKernel
    visit_all: "TritonArtifact | None" = None         # the variant that skips no key tile, on demand
    program: str = "tile"                             # what ``rendered`` is: "tile" | "decode"
    variants: dict = field(default_factory=dict)      # concrete config -> the artifact a call runs

    def for_inputs(self, inputs: dict, sizes: dict | None = None, params: dict | None = None) -> "TritonArtifact":
        """This artifact, or its variant that visits every key tile (see ``hidden_nonfinite``)."""
        if not hidden_nonfinite(self.plan, inputs, sizes, params):
            return self
        if self.visit_all is None:
            kp = self.plan.visiting_all()
            r = render_program(kp, self.program, split=self.rendered.split)
            self.visit_all = dataclasses.replace(self, plan=kp, rendered=r, path=write_source(r.source),
                                                 compiled={}, variants={})
        return self.visit_all

    def at(self, sizes: dict, params: dict | None = None) -> "TritonArtifact":
        """The artifact a call at ``sizes`` runs: the program and the concrete config
        (:func:`config.resolve`: PROGRAM, PACK and KV_SPLITS fixed), rendered once per program."""
        cfg, _ = resolve(self.plan, self.config, sizes, _params(self.plan, sizes, params), self.hardware)
        if cfg == self.config:
            return self
        if cfg not in self.variants:
            split = cfg.KV_SPLITS > 1
            same = [a for a in (self, *self.variants.values())
                    if a.program == cfg.PROGRAM and a.rendered.split == split]
            if same:
                r, path = same[0].rendered, same[0].path
            else:
                r = render_program(self.plan, cfg.PROGRAM, split)
                path = write_source(r.source)
            self.variants[cfg] = dataclasses.replace(self, rendered=r, path=path, config=cfg, program=cfg.PROGRAM,
                                                     compiled={}, visit_all=None, variants={})
        return self.variants[cfg]

    @property
    def source(self) -> str:
        return self.rendered.source


def _tma_allocator() -> None:
    """Tensor descriptors made in a kernel (``tl.make_tensor_descriptor``) need global scratch
    memory for the descriptors, which Triton asks of the allocator ``triton.set_allocator`` set (a
    context variable): where none is set in this context, einattn sets one of torch's; an
    allocator the caller set is kept."""
    import triton
    from triton.runtime import _allocation
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_scratch)


def _torch_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def device_kind() -> str | None:
    """'cuda' or 'rocm' when torch sees such a device, else None."""
    if not torch.cuda.is_available():
        return None
    return "rocm" if getattr(torch.version, "hip", None) else "cuda"


class TritonBackend:
    """``cuda[:sm_80|sm_90|...]`` and ``rocm[:gfx90a|gfx942]`` through Triton.

    Config keys: BLOCK_M, BLOCK_N, num_warps, num_stages, KV_SPLITS, PROGRAM, PACK (``TritonConfig``).
    """
    name = "triton"
    config_keys = TritonConfig.__slots__
    # per-row values and outputs carry grid, query and value indices ([BLOCK_M] or
    # [BLOCK_M, BLOCK_e] blocks); contraction indices live only inside tl.dot
    capabilities = Capabilities(max_value_indices=MAX_VALUE_WIDTHS, row_reductions=True, outputs_need_query=True,
                                output_roles=frozenset({"grid", "query", "value"}),
                                row_feature_roles=frozenset({"value"}), max_row_features=1)

    # the chunked scan of linear cascades (backends/linear.py); its rate relative to the quadratic
    # kernel is not measured on a GPU (none here): the CPU's figure stands in
    scan_efficiency = 0.35

    @staticmethod
    def scan(x, mask: str, chunk: int, schedule: str, state=None, interpret: bool = False):
        from .linear import scan_triton
        return scan_triton(x, mask, chunk, schedule, state, interpret=interpret)

    def supports(self, target: Target) -> bool:
        return target.kind in ("cuda", "rocm")

    def prepare(self, plan, target: Target, config: dict, interpret: bool = False, **options) -> TritonArtifact:
        if options:
            raise UnsupportedError(f"unknown options for the Triton backend: {sorted(options)}")
        hw = load_target(target)
        cfg = parse_config(config, hw)
        kp = make_kernel_plan(plan)
        check_capabilities(kp, self.capabilities, target.kind)
        if cfg.KV_SPLITS > 1 and (why := split_refusal(kp)) is not None:
            raise UnsupportedError(f"config KV_SPLITS={cfg.KV_SPLITS} for target {target}: {why}; "
                                   f"use KV_SPLITS=1 (the default) for this spec")
        if cfg.PACK > 1 and cfg.PROGRAM == "tile":
            raise UnsupportedError(f"config PACK={cfg.PACK} with PROGRAM='tile' for target {target}: only the "
                                   f"decode program packs heads; use PROGRAM='decode' (or 'auto') or PACK=1")
        if cfg.PACK > 1 and packing(kp).index is None:          # refused at any sizes
            raise UnsupportedError(f"config {pack_refusal(kp, cfg.PACK, {}, {})}")
        program = "decode" if cfg.PROGRAM == "decode" else "tile"
        rendered = render_program(kp, program, split=cfg.KV_SPLITS > 1)
        check_config(kp, cfg, hw, sizes=None, dtype=None)
        return TritonArtifact(kp, rendered, Target(target.kind, hw.arch), hw, cfg, bool(interpret),
                              write_source(rendered.source), program=program)

    def describe(self, artifact: TritonArtifact, sizes: dict, params: dict | None = None) -> str:
        """Which program a call at ``sizes`` gets, why, and its layout (for ``einattn explain``)."""
        return describe_program(artifact.plan, artifact.config, sizes, _params(artifact.plan, sizes, params),
                                artifact.hardware)

    # -- ahead of time --------------------------------------------------------------
    def build(self, artifact: TritonArtifact, sizes: dict, dtype: torch.dtype = torch.float16,
              params: dict | None = None):
        """Compile for the artifact's architecture at these sizes (head dims) and input dtype;
        ``params`` set the constexprs that depend on them (``FOLD_<score>``; None: positive scales)."""
        artifact = artifact.at(sizes, params)
        check_config(artifact.plan, artifact.config, artifact.hardware, sizes=sizes, dtype=dtype)
        check_slice_offsets(artifact, sizes)
        key = (tuple(sorted(constexpr_values(artifact.rendered, sizes, artifact.config, "", params).items())),
               dtype)      # (TMA follows from the sizes, dtype and architecture)
        if key not in artifact.compiled:
            r = artifact.rendered
            fn = load_kernel(artifact.path, r.kernel_name, interpret=False)
            combine = load_kernel(artifact.path, r.combine_name, interpret=False) if r.split else None
            ck = compile_kernel(fn, artifact, sizes, dtype, combine=combine, params=params)
            check_compiled(ck.resources, artifact.hardware, artifact.config)
            if ck.combine is not None:
                check_compiled(ck.combine.resources, artifact.hardware, artifact.config)
            artifact.compiled[key] = ck
        return artifact.compiled[key]

    # -- running ----------------------------------------------------------------------
    def launch(self, artifact: TritonArtifact, inputs: dict, sizes: dict, params: dict) -> dict:
        r = artifact.rendered
        if artifact.interpret:
            device = torch.device("cpu")
        else:
            here = device_kind()
            if here != artifact.target.kind:
                seen = f"a {here} device" if here else "no GPU (torch.cuda.is_available() is False)"
                raise BackendUnavailable(
                    f"cannot run the {artifact.target} kernel for '{artifact.plan.cascade.name}': this machine has "
                    f"{seen}. To run the same Triton kernel on the CPU in Triton's interpreter, compile with "
                    f"einattn.compile(..., target='{artifact.target}', interpret=True) or set EINATTN_INTERPRET=1; "
                    f"to inspect the compiled code use `einattn compile SPEC --target {artifact.target} --out DIR`")
            device = torch.device("cuda")
        params = complete_params(artifact.plan.cascade, sizes, params)
        artifact = artifact.at(sizes, params)
        x = with_statistics(artifact.plan, check_inputs(artifact, inputs, device), sizes, params)
        compute = dot_dtype(artifact.plan, x)
        dts = [t.dtype for t in x.values()]
        artifact = artifact.for_inputs(x, sizes, params)
        r = artifact.rendered
        fn = load_kernel(artifact.path, r.kernel_name, interpret=artifact.interpret)
        if artifact.interpret and compute == torch.bfloat16:
            # Triton 3.9's interpreter computes tl.dot on bf16 wrongly (outputs ~1e8): interpret the
            # kernel on fp32 copies (bf16 values are exact in fp32) and round the outputs to bf16
            x = {k: v.float() for k, v in x.items()}
        run = torch.float32 if artifact.interpret and compute == torch.bfloat16 else compute
        outs = {}
        for o, dims in r.outputs:
            outs[o] = torch.empty([sizes[i] for i in dims], dtype=output_dtype(r, dims, run), device=device)
        args = []
        ws = {}
        if r.split:
            # every element a part can read is written by its part first (masked rows are read masked)
            shapes = decode_workspace_shapes(r, artifact.plan, sizes, artifact.config) \
                if artifact.program == "decode" else workspace_shapes(r, sizes, artifact.config)
            ws = {w: torch.empty(s, dtype=torch.float32, device=device) for w, s in shapes.items()}
        lists = {}
        if artifact.plan.tile_lists:            # block-sparse: the key tiles each program visits
            from ..tiles import visit_lists        # (KV_SPLITS > 1 is refused: compiler.splits)
            if artifact.program == "decode":
                raise UnsupportedError(f"{artifact.plan.cascade.name}: the decode program with a block-sparse key "
                                       f"loop is not built on triton; use config={{'PROGRAM': 'tile'}}")
            count, tiles, _ = visit_lists(artifact.plan, x, sizes, params, artifact.config.BLOCK_M,
                                          artifact.config.BLOCK_N)
            lists = {"count": count.to(device), "tiles": tiles.to(device)}
        for a in r.args:
            if a.kind == "workspace":
                args.append(ws[a.of])
            elif a.kind == "tiles":
                args.append(lists[a.of])
            elif a.kind == "tiles_stride":
                args.append(lists["tiles"].stride(0))
            elif a.kind == "ptr":
                args.append(x[a.of] if a.of in x else outs[a.of])
            elif a.kind == "stride":
                t = x[a.of] if a.of in x else outs[a.of]
                args.append(t.stride(a.dim))
            elif a.kind == "size":
                args.append(int(sizes[a.of]))
            else:
                v = params[a.of]
                args.append(int(v) if a.dtype == "i32" else float(v))
        tma = tma_usable(r, artifact.hardware.compute_capability if artifact.hardware.kind == "cuda" else None,
                         sizes, {}, tensors=x)
        if tma and not artifact.interpret:
            _tma_allocator()
        ce = constexpr_values(r, sizes, artifact.config, dot_precision(dts), params, tma)
        if not artifact.interpret:
            check_config(artifact.plan, artifact.config, artifact.hardware, sizes=sizes, dtype=compute)
        grid = launch_grid(artifact.plan, artifact.config, sizes)
        grid_n = grid[1]
        if sizes[r.query] == 0 or grid_n == 0:
            return outs
        check_offsets(artifact, x, outs, grid_n)
        opts = {"num_warps": artifact.config.num_warps, "num_stages": artifact.config.num_stages}
        calls = [(fn, grid)]
        if r.split:
            combine = load_kernel(artifact.path, r.combine_name, interpret=artifact.interpret)
            calls = [(fn, (*grid, artifact.config.KV_SPLITS)), (combine, grid)]
        if artifact.interpret:
            import numpy as np
            # (-inf) - (-inf) is computed before _sub_rule selects -inf: numpy would warn
            with interpreting(), np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                for f, g in calls:
                    f[g](*args, **ce, **opts)
            if run != compute:
                outs = {o: outs[o].to(output_dtype(r, dims, compute)) for o, dims in r.outputs}
        else:
            for f, g in calls:
                f[g](*args, **ce, **opts, enable_fp_fusion=True)
        return outs

    # -- tuning -------------------------------------------------------------------------
    def space(self, plan, target: Target, workload: Workload) -> list[dict]:
        """The configs worth trying for ``plan`` at ``workload`` (``TritonConfig.space``): full dicts,
        the default first, each checked against the target's limits; nothing is compiled."""
        kp = make_kernel_plan(plan)
        return [c.to_json() for c in TritonConfig.space(kp, workload, load_target(target))]

    def default_config(self, plan, target: Target, workload: Workload) -> dict:
        """The config used when none is given, as it resolves at ``workload`` (every key explicit:
        the program ``choose_program`` names, PACK and KV_SPLITS as ``config.resolve`` chooses them)."""
        kp = make_kernel_plan(plan)
        sizes = workload.as_dict()
        if kp.query not in sizes:
            return dataclasses.replace(TritonConfig(), PROGRAM="tile", PACK=1, KV_SPLITS=1).to_json()
        return resolve(kp, TritonConfig(), sizes, _params(kp, sizes, None), load_target(target))[0].to_json()

    def kernel_source(self, plan, target: Target, config: dict, workload: Workload) -> str:
        """The generated source of the program ``config`` runs at ``workload`` (what a tuning record's
        ``source_sha`` hashes)."""
        return self.prepare(plan, target, config).at(workload.as_dict()).source

    def fingerprint(self, target: Target) -> dict:
        """What a tuning record for ``target`` was measured against: a change to any of these
        may change the best config."""
        import triton
        hw = load_target(target)
        return {"backend": self.name, "kind": hw.kind, "arch": hw.arch, "hardware": hw.name,
                "triton": triton.__version__, "template": template_hash()}

    def model_time(self, plan, target: Target, config: dict, workload: Workload, compile: bool = True) -> dict:
        """Predicted time of ``config`` at ``workload`` (``model.predict``) from the kernel compiled
        ahead of time at the workload's head dims and dtype; a config that does not compile or fit
        raises :class:`UnsupportedError` with the reason. With ``compile=False`` nothing is rendered
        or compiled: the shared memory and registers are ``estimate()``'s (milliseconds a config)."""
        if not compile:
            hw = load_target(target)
            cfg, kp = parse_config(config, hw), make_kernel_plan(plan)
            check_capabilities(kp, self.capabilities, target.kind)
            sizes = workload.as_dict()
            cfg = resolve(kp, cfg, sizes, _params(kp, sizes, None), hw)[0]
            cfg.validate(hw, kp, workload)
            return predict(kp, cfg, workload, hw)
        sizes = workload.as_dict()
        art = self.prepare(plan, target, config).at(sizes)
        hw = art.hardware
        art.config.validate(hw, art.plan, workload)
        dtype = getattr(torch, workload.dtype)
        try:
            ck = self.build(art, sizes, dtype)
        except EinattnError:
            raise
        except Exception as e:     # Triton's own compile errors (out of resources, MLIR failures)
            raise UnsupportedError(f"config {art.config.to_json()} does not compile for {art.target} "
                                   f"({hw.name}) at {sizes}, {workload.dtype}: {type(e).__name__}: "
                                   f"{str(e).strip()[:400]}") from None
        return predict(art.plan, art.config, workload, hw, resources=ck.resources)


def check_inputs(artifact: TritonArtifact, inputs: dict, device: torch.device) -> dict:
    """Every input on the kernel's device in fp32, fp16 or bf16; never moved or cast silently."""
    where = "CPU tensors (Triton's interpreter)" if device.type == "cpu" else "CUDA/ROCm tensors"
    for k, v in inputs.items():
        if v.device.type != device.type:
            fix = ".cpu()" if device.type == "cpu" else ".cuda()"
            raise UnsupportedError(f"input '{k}' is on {v.device}; the {artifact.target} kernel"
                                   f"{' in interpret mode' if artifact.interpret else ''} takes {where}: "
                                   f"move it with {k}{fix}")
        if v.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            fix = ("the Triton kernels compute in fp32 at most: convert with .float(), or use "
                   "target='reference' for float64") if v.dtype == torch.float64 else "convert with .float()"
            raise UnsupportedError(f"input '{k}' is {v.dtype}; the {artifact.target} target takes float32, "
                                   f"float16 or bfloat16 tensors: {fix}")
    return dict(inputs)


def check_offsets(artifact: TritonArtifact, x: dict, outs: dict, grid_n: int) -> None:
    """Offsets inside one (batch, head) slice are 32-bit in the kernel; grid offsets are 64-bit."""
    r, c = artifact.rendered, artifact.plan.cascade
    if grid_n > 65535 and not artifact.interpret:
        raise UnsupportedError(f"{' x '.join(r.grid)} = {grid_n} programs along the grid's second axis; CUDA "
                               f"and ROCm allow at most 65535: call the kernel on slices of the batch")
    dims = {t.name: t.indices for t in c.inputs} | {o: d for o, d in r.outputs}
    for name, t in list(x.items()) + list(outs.items()):
        reach = span(t.shape, t.stride(), skip=[j for j, d in enumerate(dims[name]) if d in r.grid])
        if reach >= INDEX_LIMIT:
            raise UnsupportedError(
                f"tensor '{name}' (shape {tuple(t.shape)}) spans {reach} elements within one "
                f"({', '.join(r.grid)}) slice; the {artifact.target} kernel indexes inside a slice with 32-bit "
                f"offsets (< 2**31; batch and head offsets are 64-bit). Queries are independent: call the "
                f"kernel on chunks of the query rows; a key length that large is not supported yet")


def triton_cdiv(a: int, b: int) -> int:
    return (int(a) + b - 1) // b
