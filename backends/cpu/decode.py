"""The CPU decode program: what :class:`~einattn.backends.cpu.view.KernelView` changes for it.

One task is a row block of ``PACK`` heads x ``BLOCK_M`` query rows (``compiler/decode.py``:
heads whose K and V rows are the same, a GQA group); row ``li`` is head ``li // BLOCK_M`` of
the pack and query row ``li % BLOCK_M`` of the block. Tiles are ``t_X[row, key]`` and the
tile expressions are vectorised along the keys (``BLOCK_N`` lanes), so one query row wastes
nothing; a score is a dot product per (key, row) vectorised along the contraction and
summed across the lanes by halving; row reductions keep ``VEC`` partial results per row and
fold them after the tile; the P.V register tiles are the tile program's, reading the weights
by row. K and V are read with the pack's first head (every head of the pack reads the same
rows), the rest (Q, per-head params such as ALiBi slopes or sinks) with each row's own head.
Rows past the query length are computed on clamped coordinates and not stored.
"""
from __future__ import annotations

import dataclasses

from einattn.compiler.decode import packing

from .config import CpuConfig
from .expr import Ctx
from .view import KernelView


class DecodeView(KernelView):
    decode = True
    rows_first = True

    def __init__(self, kp, cfg: CpuConfig, static: dict[str, int], vec: int, dtypes=None, bf16_dot: bool = False):
        assert cfg.decode and cfg.PACK >= 1, cfg
        self.mq, self.pack = cfg.BLOCK_M, cfg.PACK
        self.packed = packing(kp).index if cfg.PACK > 1 else None
        # the template's rows: the whole row block
        super().__init__(kp, dataclasses.replace(cfg, BLOCK_M=cfg.rows()), static, vec, dtypes, False)
        for p in self.passes:                     # the score's chunks along the contraction
            for v in p.fast + p.general:
                if v.kind == "SCORE":
                    v.fchunks = self.contraction_chunks(v)
                    v.tree = self.halving(min(vec, v.F))
                elif v.kind == "ROW_REDUCE":
                    v.tree = self.halving(vec)

    # -- the hooks of KernelView ------------------------------------------------------
    def query_block(self) -> int:
        return self.mq

    def grid_size(self, g: str) -> str:
        return f"T.floordiv({self.size(g)}, {self.pack})" if g == self.packed else self.size(g)

    def operand_shape(self, F: int) -> list[str]:
        return [str(self.cfg.BLOCK_M), str(F)]

    def operand_layout(self) -> tuple[str, str]:
        return "[li, lf]", f"T.floormod(li, {self.mq}) < mv"

    def tile_shape(self) -> list[str]:
        return [str(self.cfg.BLOCK_M), str(self.cfg.BLOCK_N)]

    def row_count(self, has_query: bool) -> str:
        return str(self.cfg.BLOCK_M) if has_query else "1"

    def row_query(self) -> str:
        return f"T.min(m0 + T.floormod(li, {self.mq}), {self.size(self.kp.query)} - 1)"

    def coords(self, m: str = "", n: str = "n0 + lj", f: str | None = None, fname: str | None = None,
               extra: dict | None = None) -> dict:
        out = super().coords(m=self.row_query(), n=n, f=f, fname=fname)
        if self.packed is not None:
            out[self.packed] = f"(g_{self.packed} * {self.pack} + T.floordiv(li, {self.mq}))"
        out.update(extra or {})
        return out

    def coord_out(self, d: str) -> str:
        if d == self.kp.query:
            return f"m0 + T.floormod(li, {self.mq})"
        if d == self.packed:
            return f"g_{d} * {self.pack} + T.floordiv(li, {self.mq})"
        return super().coord_out(d)

    def key_side(self) -> dict:
        return {self.packed: f"g_{self.packed} * {self.pack}"} if self.packed is not None else {}

    def key_coord(self, fast: bool) -> str:
        # the tile loops run over all BLOCK_N lanes: keys past the last are clamped, and left out
        # of the reductions and of P.V
        return "n0 + lj" if fast else f"T.min(n0 + lj, {self.size(self.kp.key)} - 1)"

    def tile_ctx(self, tag, fast, flags, mask, alias, m_c, n_c) -> Ctx:
        return self.ctx(tag=tag, lane="lj", lanes=self.cfg.BLOCK_N, fast=True, flags=flags, mask=mask,
                        coords=self.coords(n=n_c), alias=alias)

    def reduce_ctx(self, tctx: Ctx, fast: bool) -> Ctx:
        lj = f"jc * {self.vec} + lv"
        n = f"n0 + {lj}" if fast else f"T.min(n0 + {lj}, {self.size(self.kp.key)} - 1)"
        return dataclasses.replace(tctx, lane="lv", lanes=self.vec, local=dict(tctx.local) | {"__key": f"({lj})"},
                                   coords=self.coords(n=n))

    def score_key_ctx(self, op, tag: str, fast: bool, m_c: str) -> Ctx:
        lj = f"jt * {self.cfg.SCORE_RJ} + jj"
        n = f"n0 + {lj}" if fast else f"T.min(n0 + {lj}, {self.size(self.kp.key)} - 1)"
        return self.ctx(tag=tag + "k", lane="lv", lanes=self.vec, fast=True, flags={},
                        coords=self.coords(n=n, f="fc * %d + lv" % self.vec, fname=op.contract,
                                           extra=self.key_side()))

    def weight_at(self) -> str:
        return f"[it * {self.cfg.PV_RM} + ii, lj]"

    def fused_reductions(self, p, fast: bool) -> dict:
        return {}          # each reduction folds its own partial results

    def staged_reads(self, p) -> dict:
        return {}          # a dense [.., m, n] input is read along its rows already

    # -- the score's dot products --------------------------------------------------------
    def contraction_chunks(self, v) -> list:
        """``(first feature, (chunks, lanes), context)``: whole vectors, then the rest."""
        vec, F = self.vec, v.F
        out = []
        if F // vec:
            out.append((0, (F // vec, vec), v.bctx))
        if F % vec:
            f0 = F - F % vec
            cx = dataclasses.replace(v.bctx, tag=v.bctx.tag + "t",
                                     coords=dict(v.bctx.coords) | {self._contract(v): f"{f0} + lv"})
            out.append((f0, (1, F % vec), cx))
        return out

    def _contract(self, v) -> str:
        return next(op.contract for op in self.kp.scores if op.name == v.name)

    @staticmethod
    def halving(width: int) -> list[int]:
        """The widths of the halving steps that sum ``width`` lanes (a power of two or not)
        into lane 0: the lanes at or past a step's width fold into those below it."""
        out, w = [], 1
        while w < width:
            w *= 2
        while w > 1:
            w //= 2
            out.append(w)
        return out
