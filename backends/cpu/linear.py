"""The CPU (TVM) linear scan: ``templates/cpu/linear_scan.tvmscript.jinja`` rendered, built and run.

:func:`scan_cpu` has the contract of ``backends.torch.linear.scan_torch``: ScanInputs in,
``(num [G, M, E'], final state [G, D, E'])`` out. The host pads D to a multiple of ``RD``
and E' to a multiple of the vector width with zero columns (they add nothing to a dot
product) and slices them off the results.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import json
from dataclasses import dataclass

import torch

from einattn.ir import Expr, Op, Sub, UnsupportedError

from .build import _tvm_version, code_hash, get_built
from .expr import Ctx, lower
from .runtime import host

TEMPLATE = "linear_scan.tvmscript.jinja"
CHUNKS = (16, 32, 64, 128)
SCHEDULES = ("fused", "materialised")


@dataclass(frozen=True)
class ScanConfig:
    CHUNK: int
    D: int
    E: int
    MASK: str
    DECAY: bool
    STATE: bool
    SCHEDULE: str = "fused"
    RI: int = 4
    RM: int = 4
    RD: int = 4

    def check(self, vec: int) -> None:
        if self.CHUNK not in CHUNKS:
            raise UnsupportedError(f"CHUNK={self.CHUNK}: the CPU scan takes a chunk of {', '.join(map(str, CHUNKS))}")
        if self.SCHEDULE not in SCHEDULES:
            raise UnsupportedError(f"SCHEDULE={self.SCHEDULE!r}: expected one of {', '.join(SCHEDULES)}")
        assert self.E % vec == 0 and self.D % self.RD == 0 and self.CHUNK % self.RI == 0 \
            and self.CHUNK % self.RM == 0, self


@functools.lru_cache(maxsize=None)
def template_source() -> str:
    return (importlib.resources.files("einattn.templates") / "cpu" / TEMPLATE).read_text()


def _exp(e: Expr, coords: dict, lane: str, lanes: int, tag: str):
    return lower(Expr(Op.EXP, (e,)), Ctx(coords=coords, local={}, lane=lane, lanes=lanes, fast=True, tag=tag))


def _ad(at: str) -> Expr:
    return Expr.read("ad", (Sub("g"), Sub(at)))


class _View:
    def __init__(self, cfg: ScanConfig):
        args = ["h_F: T.handle", "h_K: T.handle", "h_V: T.handle"]
        args += ["h_ad: T.handle"] * cfg.DECAY + ["h_S0: T.handle"] * cfg.STATE
        args += ["h_out_O: T.handle", "h_out_S: T.handle"] + ["h_ws: T.handle"] * (cfg.SCHEDULE == "materialised")
        self.args = args
        C = cfg.CHUNK
        row = f"T.min(c0 + it * {cfg.RI} + ii, sz_m - 1)"
        key = "T.min(c0 + j, sz_n - 1)"
        self.qf = _exp(_ad("m"), {"g": "g", "m": "T.min(c0 + i, sz_m - 1)"}, "i", C, "qf_")
        self.kf = _exp(Expr(Op.SUB, (_ad("t"), _ad("n"))), {"g": "g", "t": "c0 + L - 1", "n": key}, "j", C, "kf_")
        self.wf = _exp(Expr(Op.SUB, (_ad("m"), _ad("n"))), {"g": "g", "m": row, "n": key}, "j", C, "wf_")


def render_scan(cfg: ScanConfig, vec: int) -> str:
    import jinja2
    cfg.check(vec)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    return env.from_string(template_source()).render(k=_View(cfg), cfg=cfg)


_BUILT: dict[ScanConfig, object] = {}       # config -> kernel: a call looks up neither disk nor metadata


def _kernel(cfg: ScanConfig):
    fn = _BUILT.get(cfg)
    if fn is None:
        fn = _BUILT[cfg] = _build_kernel(cfg)
    return fn


def _build_kernel(cfg: ScanConfig):
    vec = host().fp32_lanes
    fields = {"kind": "linear_scan", "config": dataclasses.asdict(cfg), "target": host().fingerprint(),
              "template": hashlib.sha256(template_source().encode()).hexdigest()[:16], "code": code_hash(),
              "tvm": _tvm_version(), "layout": 2}
    key = "scan-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    return get_built(key, fields, lambda: render_scan(cfg, vec))


def register_rows(width: int, vec: int) -> int:
    """Rows of a register tile ``rows x width`` (accumulators ``rows * width / vec``) that fit about
    three quarters of the vector registers (16 with AVX2, 32 with AVX-512): 1, 2 or 4. Measured at
    N=8192, d=e=64 on an AVX2 host: 4 rows (32 accumulators, spilled) 55 ms, 1 row 33 ms."""
    regs = 32 if vec >= 16 else 16
    rows = max(1, min(4, (regs * 3 // 4) * vec // width))
    return 1 << (rows.bit_length() - 1)          # a power of two: it divides the chunk


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[-1] == width:
        return t.contiguous()
    return torch.nn.functional.pad(t, (0, width - t.shape[-1])).contiguous()


def scan_cpu(x, mask: str, chunk: int, schedule: str = "fused",
             state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked scan on the CPU (the contract of ``scan_torch``)."""
    vec = host().fp32_lanes
    g, M, D = x.F.shape
    N, E = x.K.shape[1], x.V.shape[-1]
    Ep = -(-E // vec) * vec
    ri, rm = register_rows(chunk, vec), register_rows(Ep, vec)
    Dp = -(-D // rm) * rm
    decay = x.ad is not None and mask != "none"
    cfg = ScanConfig(chunk, Dp, Ep, mask, decay, state is not None, schedule if mask != "none" else "fused",
                     RI=ri, RM=rm, RD=rm)
    fn = _kernel(cfg)
    args = [_pad(x.F, Dp), _pad(x.K, Dp), _pad(x.V, Ep)]
    if decay:
        args.append(x.ad.contiguous())
    if state is not None:
        s0 = state.reshape(g, D, E).float()
        args.append(torch.nn.functional.pad(s0, (0, Ep - E, 0, Dp - D)).contiguous())
    out = torch.empty(g, M, Ep)
    fin = torch.empty(g, Dp, Ep)
    args += [out, fin]
    if cfg.SCHEDULE == "materialised":
        args.append(torch.empty(g, -(-N // chunk), Dp, Ep))
    if g and (M or N):
        fn(*args)
        return out[..., :E], fin[:, :D, :E]
    s = torch.zeros(g, D, E) if state is None else state.reshape(g, D, E).float()
    return torch.zeros(g, M, E), s
