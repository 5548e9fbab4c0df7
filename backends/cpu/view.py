"""The view of a KernelPlan the CPU template loops over (the tile program; ``decode.py`` the other).

The template (``templates/cpu/attention.tvmscript.jinja``) is a skeleton of
loops; this module prepares the facts it loops over (buffers, the ops of each
pass in two variants, the contexts of the expression hook) and the config. The
user's expressions are printed only by :func:`einattn.backends.cpu.expr.lower`,
which the template calls.

Two variants of each key-tile body are rendered:
- ``fast``: the query tile and the key tile are full and the pass's mask is true
  on the whole tile: no predicate, no bounds, no clamped reads;
- ``general``: everything else (diagonal tiles, tails): the predicate is
  evaluated per element, reads past the last row or key are clamped, reductions
  stop at the last valid key.
A key tile on which the mask is false everywhere is skipped when the plan says
that this leaves every reduction at its identity (``KernelPass.skip_empty``).
Which case a tile is in is decided from its corners (``masks.atom``, ``masks.tile_decision``).

With ``KV_SPLITS = S > 1`` the parallel loop runs over (task, part): each part
streams its own range of key tiles and stores its per-row state to a float32
workspace (an extra argument, allocated by the launcher: :func:`workspace_numel`,
laid out by :func:`split_layout`); a second parallel loop over tasks merges the
parts' states as ``compiler/splits.py`` says and runs the epilogue and the stores.
S = 1 renders exactly the kernel without any of this.

What the kernel can compile is checked before rendering (``CpuBackend.capabilities``,
``compiler.capabilities``); copies of tiles, reductions fused into a MAP's loop and the
staged [.., m, n] input reads come from the lowering rules (``compiler.lowering``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

from einattn.compiler import Kind, KernelPlan
from einattn.compiler.infinity import input_flags
from einattn.compiler.lowering import alias_copies, fuse_row_reductions, stage_dense_reads
from einattn.compiler.masks import atom, tile_decision
from einattn.compiler.splits import merges as split_merges
from einattn.ir import Expr, Op, Reduce, Sub

from .config import CpuConfig
from .expr import STORAGE, Ctx, fconst, inf_flags, input_ref, lower, store_text
from .pairs import IR, LANES, pack, pack_rounded, pack_vector, pair_load


# -- the view the template loops over -------------------------------------------------

@dataclass
class OpView:
    kind: str                       # SCORE MAP ROW_REDUCE VALUE RUNNING
    name: str
    expr: Expr | None = None
    ctx: Ctx | None = None
    reduce: str = ""                # sum / max / min
    identity: str = ""
    corr: list = dataclasses.field(default_factory=list)       # [(stabiliser, expr, ctx)] computed first
    rescale: list = dataclasses.field(default_factory=list)    # stabiliser names multiplying the state
    weights: str = ""               # VALUE: tile buffer of the weights
    nkeys: str = "BLOCK_N"          # extent of loops over valid keys
    a: Expr | None = None           # VALUE: the value read
    b: Expr | None = None           # SCORE: the key-side read
    bctx: Ctx | None = None
    F: int = 0                      # SCORE: contraction size
    reduces: list = dataclasses.field(default_factory=list)     # MAP: ROW_REDUCEs done in its loop
    fused: bool = False             # ROW_REDUCE: done in the preceding MAP's loop
    pair: dict | None = None        # SCORE, VALUE: the texts of the vdpbf16ps form (pairs.py)


@dataclass
class PassView:
    index: int
    init: list                      # [(buffer, fill text)]
    stabilisers: list               # names whose previous value is kept for the rescale
    visit: str                      # condition to process a key tile (not provably empty)
    fast_cond: str
    fast: list
    general: list
    epilogue: list                  # [OpView] of ROW ops
    # running rows recomputed once after the key loop: a row block that visits no key tile
    # (all skipped) still gets their values from the initial state (an output M = max(M0, t))
    after: list = dataclasses.field(default_factory=list)
    lists: bool = False             # the key loop visits the host-made tile list (block-sparse sites)


class KernelView:
    """Everything the template needs, derived from a KernelPlan, static sizes and the config."""

    def __init__(self, kp: KernelPlan, cfg: CpuConfig, static: dict[str, int], vec: int,
                 dtypes: Mapping[str, str] | None = None, bf16_dot: bool = False):
        self.kp, self.cfg, self.static, self.vec = kp, cfg, dict(static), vec
        # bf16 contractions on vdpbf16ps (pairs.py) where the host has it and the config allows
        self.pairs = bf16_dot and cfg.DOT == "auto" and not self.decode
        c = kp.cascade
        # the dtype of each input and output where it is not float32 (``io_dtypes``)
        self.dtypes = {k: v for k, v in (dtypes or {}).items() if v != "float32"}
        self.loads = {t.name: self.dtypes[t.name] for t in c.inputs if t.name in self.dtypes}
        self.c = c
        # inputs may hold +-inf (and NaN): the masked-row rules are printed wherever an input
        # can reach them (a compare and a blend, small next to the dot products)
        self.input_flags = input_flags(c)
        q, n = kp.query, kp.key
        self.rowdims = set(kp.rowdims)
        self.ops = dict(kp.ops)

        # sizes, inputs, outputs, params
        dyn = []
        for t in c.inputs:
            for i in t.indices:
                if i not in self.static and i not in dyn:
                    dyn.append(i)
        self.size_vars = [f"sz_{i}" for i in dyn]
        self.inputs = []
        for t in c.inputs:
            shape = [self.size(i) for i in t.indices]
            # unit innermost stride where rows are read as vectors (a compiled-in last dim)
            unit = bool(t.indices) and t.indices[-1] in self.static
            svars = [f"st_{t.name}_{k}" for k in range(len(t.indices) - (1 if unit else 0))]
            strides = svars + (["1"] if unit else [])
            self.inputs.append({"name": t.name, "shape": _tup(shape), "stride_vars": svars, "strides": _tup(strides),
                                "dtype": STORAGE[self.dtypes.get(t.name, "float32")]})
        self.outputs = [{"name": o, "shape": _tup([self.size(i) for i in c.stmt(o).indices]),
                         "dims": c.stmt(o).indices, "dtype": STORAGE[self.dtypes.get(o, "float32")]}
                        for o in c.outputs]
        self.params = [p.name for p in c.params]
        self.operand_at, self.row_valid = self.operand_layout()
        self.splits = cfg.KV_SPLITS
        self.lists = kp.tile_lists          # block-sparse: host-made key-tile lists (backends/tiles.py)
        self.args = ([f"h_{t.name}: T.handle" for t in c.inputs] + [f"h_out_{o}: T.handle" for o in c.outputs]
                     + (["h_ws: T.handle"] if self.splits > 1 else [])
                     + (["h_kv_count: T.handle", "h_kv_tiles: T.handle"] if self.lists else [])
                     + [f"p_{p}: T.float32" for p in self.params])
        # grid decomposition: task = ((g0 * G1 + g1) ...) * qtiles + qt
        self.block_q = self.query_block()
        self.qtiles = f"T.floordiv({self.size(q)} + {self.block_q - 1}, {self.block_q})"
        self.ktiles = f"T.floordiv({self.size(n)} + {cfg.BLOCK_N - 1}, {cfg.BLOCK_N})"
        self.sz_query, self.sz_key = self.size(q), self.size(n)
        ntask = self.qtiles
        self.grid = []
        rest = f"T.floordiv(task, {self.qtiles})"
        for k, g in enumerate(reversed(kp.grid)):
            gs = self.grid_size(g)
            ntask = f"{ntask} * {gs}"
            last = k == len(kp.grid) - 1
            self.grid.insert(0, {"var": f"g_{g}", "expr": rest if last else f"T.floormod({rest}, {gs})"})
            rest = f"T.floordiv({rest}, {gs})"
        self.num_tasks = ntask

        # buffers: rows (state, epilogue values, prev/corr), tiles, score operands
        self.rows: dict[str, tuple[str, ...]] = {}
        self.tiles: set[str] = set()
        self.buffers = []
        for op in kp.prologue:
            self.add_row(op.name, op.dims)
        for p in kp.passes:
            for op in p.loop:
                if op.kind in (Kind.SCORE, Kind.MAP):
                    self.add_tile(op.name)
                elif op.kind is Kind.VALUE:
                    self.add_row(op.name, op.dims)
                    if not _tile_read(op.weights, self.tiles):
                        self.add_tile(op.name + "__w")
                else:
                    self.add_row(op.name, op.dims)
                for m, _ in getattr(op, "rescale", ()):
                    if "prev__" + m not in self.rows:
                        self.add_row("prev__" + m, (q,))
                        self.add_row("corr__" + m, (q,))
            for op in p.epilogue:
                self.add_row(op.name, op.dims)
        self.scores = []
        for op in kp.scores:
            F = self.static[op.contract]
            self.buffers.append({"name": f"a_{op.name}", "shape": _tup(self.operand_shape(F))})
            ctx = Ctx(coords=self.coords(m=f"T.min(m0 + li, {self.size(q)} - 1)", f="lf", fname=op.contract),
                      local={}, lane="lf", lanes=1, fast=False, tag=f"sa_{op.name}_", loads=self.loads)
            pack = None
            if self.score_pairs(op):
                self.buffers.append({"name": f"a2_{op.name}", "shape": _tup([str(F // 2), str(cfg.BLOCK_M)]),
                                     "dtype": "int32"})
                self.buffers.append({"name": f"s_{op.name}", "shape": "(1,)"})
                pack = pack_rounded(f"a_{op.name}[2 * lf2, li]", f"a_{op.name}[2 * lf2 + 1, li]")
            self.scores.append({"name": op.name, "F": F, "a": op.query_read, "scalars": op.scalars, "ctx": ctx,
                                "ctx1": dataclasses.replace(ctx, tag=f"sc_{op.name}_"), "pack": pack})
        self.value_pairs = {op.name: self.add_value_pairs(op) for p in kp.passes for op in p.loop
                            if op.kind is Kind.VALUE and self.value_pairs_ok(op)}
        self.dot_ir = repr(IR) if (any(s["pack"] for s in self.scores) or self.value_pairs) else None
        self.prologue = [self.row_op(op, "pro") for op in kp.prologue]
        self._staged: dict[int, dict] = {}
        self.passes = [self.pass_view(p) for p in kp.passes]
        self.split = self.split_view() if self.splits > 1 else None
        self.stores = []
        for o in self.outputs:
            dims = o["dims"]
            feat = [d for d in dims if d not in self.rowdims]
            self.stores.append({"name": o["name"], "feat": [(f"l_{d}", self.static[d]) for d in feat],
                                "dst": ", ".join(self.coord_out(d) for d in dims),
                                "src": store_text(self.dtypes.get(o["name"], "float32"), self.row_ref(o["name"]))})

    # -- what the decode program (decode.py) changes ------------------------------
    decode = False
    rows_first = False          # tiles are t_X[key, row]: vectorised along the rows

    def query_block(self) -> int:
        return self.cfg.BLOCK_M

    def grid_size(self, g: str) -> str:
        return self.size(g)

    def operand_shape(self, F: int) -> list[str]:
        return [str(F), str(self.cfg.BLOCK_M)]

    def operand_layout(self) -> tuple[str, str]:
        """(index of the query-side score operand at row li, feature lf; whether row li is valid)."""
        return "[lf, li]", "li < mv"

    def tile_shape(self) -> list[str]:
        return [str(self.cfg.BLOCK_N), str(self.cfg.BLOCK_M)]

    def row_count(self, has_query: bool) -> str:
        """Rows a per-row statement outside the key loop is computed for."""
        return "mv" if has_query else "1"

    # -- helpers ------------------------------------------------------------------
    def size(self, i: str) -> str:
        return str(self.static[i]) if i in self.static else f"sz_{i}"

    def add_row(self, name: str, dims: tuple[str, ...]) -> None:
        if name in self.rows:
            return
        feat = [d for d in dims if d not in self.rowdims]
        assert all(d in self.static for d in feat), (name, feat)      # KernelPlan.static holds them
        local = ([self.kp.query] if self.kp.query in dims else []) + feat
        self.rows[name] = tuple(local)
        shape = [str(self.cfg.BLOCK_M) if d == self.kp.query else str(self.static[d]) for d in local] or ["1"]
        self.buffers.append({"name": f"r_{name}", "shape": _tup(shape)})

    def add_tile(self, name: str) -> None:
        if name in self.tiles:
            return
        self.tiles.add(name)
        self.buffers.append({"name": f"t_{name}", "shape": _tup(self.tile_shape())})

    def row_ref(self, name: str) -> str:
        loc = {self.kp.query: "li"} | {d: f"l_{d}" for d in self.static}
        return f"r_{name}[{', '.join(loc[d] for d in self.rows[name]) or '0'}]"

    def coord_out(self, d: str) -> str:
        if d in self.kp.grid:
            return f"g_{d}"
        if d == self.kp.query:
            return "m0 + li"
        return f"l_{d}"

    def coords(self, m: str = "m0 + li", n: str = "n0 + lj", f: str | None = None, fname: str | None = None,
               extra: dict | None = None) -> dict:
        out = {g: f"g_{g}" for g in self.kp.grid}
        out[self.kp.query] = m
        out[self.kp.key] = n
        for d in self.static:
            out[d] = f"l_{d}"
        if fname is not None:
            out[fname] = f
        out.update(extra or {})
        return out

    def ctx(self, *, tag: str, lane: str, lanes: int, fast: bool, coords: dict, flags: dict,
            mask=None, local_extra: dict | None = None, alias: dict | None = None) -> Ctx:
        local = {self.kp.query: "li", "__query": "li", "__key": "lj"} | {d: f"l_{d}" for d in self.static}
        local.update(local_extra or {})
        return Ctx(coords=coords, local=local, lane=lane, lanes=lanes, fast=fast, tiles=frozenset(self.tiles),
                   rows=dict(self.rows), flags=self.input_flags | dict(flags), mask=mask, tag=tag, alias=dict(alias or {}),
                   rows_first=self.rows_first, loads=self.loads)

    def row_op(self, op, where: str, flags: dict | None = None) -> OpView:
        """A per-row statement, computed for the valid rows (epilogue, prologue): elementwise, or
        a reduction over one value index into a value per row (capabilities)."""
        feat = [d for d in self.rows[op.name] if d != self.kp.query]     # at most one (capabilities)
        lane = op.reduced[0] if op.reduced else (feat[-1] if feat else None)
        cx = self.ctx(tag=f"s_{where}_{op.name}_", lane=f"l_{lane}" if lane else "li",
                      lanes=self.static[lane] if lane else self.cfg.BLOCK_M, fast=False,
                      coords=self.coords(), flags=flags or {})
        v = OpView("ROW", op.name, op.expr, cx)
        v.feat = [(f"l_{d}", self.static[d]) for d in feat]
        v.has_query = self.kp.query in self.rows[op.name]
        v.nrows = self.row_count(v.has_query)
        v.dst = self.row_ref(op.name)
        v.red, v.identity, v.acc = None, "", ""
        if op.reduced:              # a serial loop over the index, accumulating into the row value
            v.red = (f"l_{lane}", self.static[lane])
            v.identity = fconst(op.reduce.identity)
            d = v.dst
            v.acc = (f"{d} + {{}}" if op.reduce is Reduce.SUM else     # max/min keep a NaN (docs/spec.md)
                     f"T.Select(T.isnan({d}), {d}, T.{op.reduce.name.lower()}({d}, {{}}))")
        return v

    # -- passes -------------------------------------------------------------------
    def pass_view(self, p) -> PassView:
        kp, cfg = self.kp, self.cfg
        init = []
        stabs = list(p.stabilisers)
        for op in p.state:
            if op.kind is Kind.ROW_REDUCE:
                init.append((f"r_{op.name}", fconst(op.reduce.identity), self.rows[op.name]))
            elif op.kind is Kind.VALUE:
                init.append((f"r_{op.name}", fconst(0.0), self.rows[op.name]))
            else:
                init.append((f"r_{op.name}", fconst(-float("inf")), self.rows[op.name]))
        init = [{"buf": b, "fill": v, "feat": [(f"l_{d}", self.static[d]) for d in dims if d != kp.query],
                 "has_query": kp.query in dims} for b, v, dims in init]
        full, empty = (None, None) if p.mask is None else classify_tile(p.mask, kp.query, kp.key)
        visit = "True" if (p.mask is None or not p.skip_empty ) else f"T.Not({empty})"
        fast_cond = f"T.And(mv == {self.block_q}, nv == {cfg.BLOCK_N})"
        if full is not None:
            fast_cond = f"T.And({fast_cond}, {full})"
        fast = self.body(p, "fast")
        general = self.body(p, "general")
        # rows completed by this pass: conservative flags for later readers
        epi = [self.row_op(op, f"e{p.index}") for op in p.epilogue]
        flags = dict(self.input_flags) | {name: (True, True) for name in self.rows}     # any may be inf
        coords = self.coords(m=f"T.min(m0 + li, {self.size(kp.query)} - 1)")
        after = [OpView("RUNNING", op.name, op.expr,
                        self.ctx(tag=f"s_after{p.index}_{op.name}_", lane="li", lanes=cfg.BLOCK_M, fast=True,
                                 flags=flags, coords=coords))
                 for op in p.loop if op.kind is Kind.RUNNING]
        return PassView(p.index, init, stabs, visit, fast_cond, fast, general, epi, after, bool(p.sites))

    def body(self, p, variant: str) -> list[OpView]:
        kp, cfg = self.kp, self.cfg
        fast = variant == "fast"
        mask = (p.mask, True) if (fast and p.mask is not None) else None
        q = kp.query
        if fast:
            m_c, n_c = "m0 + li", self.key_coord(fast)
        else:
            m_c, n_c = f"T.min(m0 + li, {self.size(q)} - 1)", self.key_coord(fast)
        flags: dict = dict(self.input_flags)
        # rows finished before this pass may hold -inf (empty reductions)
        for name in self.rows:
            flags[name] = (True, True)
        here = {op.name for op in p.loop}
        for name in here:
            flags.pop(name, None)
        out = []
        corr_done: set[str] = set()
        nkeys = str(cfg.BLOCK_N) if fast else "nv"

        def sub(e: Expr) -> Expr:
            if mask is None:
                return e
            from einattn.compiler.masks import substitute
            return substitute(e, *mask)

        copies = alias_copies(kp, p, fast)
        fused = self.fused_reductions(p, fast)
        views: dict[str, OpView] = {}
        alias: dict[str, str] = {}
        if p.index not in self._staged:
            self._staged[p.index] = self.staged_reads(p)
        staged = self._staged[p.index]
        out_stage = []
        sctx = self.ctx(tag=f"s_{variant}_x_", lane="lj", lanes=cfg.BLOCK_N, fast=True, flags={},
                        coords=self.coords(m=m_c, n=n_c if fast else f"T.min(n0 + lj, {self.size(kp.key)} - 1)"))
        for e, buf in staged.items():
            out_stage.append((buf, e, sctx))
        for op in p.loop:
            tag = f"s_{variant}_{op.name}_"
            tctx = self.tile_ctx(tag, fast, flags, mask, alias, m_c, n_c)
            tctx = dataclasses.replace(tctx, staged=staged)
            if op.kind is Kind.SCORE:
                v = OpView("SCORE", op.name, b=op.key_read, bctx=self.score_key_ctx(op, tag, fast, m_c),
                           F=self.static[op.contract])
                if self.score_pairs(op):
                    coords = self.score_key_coords(op, fast, m_c, "T.ramp(2 * lf2, 1, 2)")
                    v.pair = {"k": pair_load(input_ref(op.key_read, coords))}
                flags[op.name] = (True, True)            # inputs may be infinite
            elif op.kind is Kind.MAP:
                e = sub(op.expr)
                flags[op.name] = inf_flags(e, flags)
                if op.name in copies:
                    alias[op.name] = copies[op.name]       # a copy: read the source tile instead
                    continue
                v = OpView("MAP", op.name, op.expr, tctx, nkeys=nkeys)
            elif op.kind is Kind.ROW_REDUCE:
                v = OpView("ROW_REDUCE", op.name, op.expr, self.reduce_ctx(tctx, fast), reduce=op.reduce.name.lower(),
                           nkeys=nkeys)
                v.identity = fconst(op.reduce.identity)
                flags[op.name] = inf_flags(sub(op.expr), flags)
                if op.name in fused:
                    v.fused = True               # reduced in the MAP's loop: one pass over the tile
                    views[fused[op.name]].reduces.append(v)
            elif op.kind is Kind.RUNNING:
                rctx = self.ctx(tag=tag, lane="li", lanes=cfg.BLOCK_M, fast=True, flags=flags, mask=mask,
                                coords=self.coords(m=m_c, n=n_c), alias=alias)
                v = OpView("RUNNING", op.name, op.expr, rctx)
                flags[op.name] = inf_flags(sub(op.expr), flags)
            else:  # VALUE
                w = _tile_read(op.weights, self.tiles)
                v = OpView("VALUE", op.name, op.weights, tctx, nkeys=nkeys)
                v.weights = f"t_{w}" if w else f"t_{op.name}__w"
                e_name = op.value_index
                v.a = op.value_read
                v.chunks = [(e0, ew, self.ctx(tag=f"{tag}v{e0}_", lane="ee", lanes=ew, fast=True, flags={},
                                              coords=self.coords(m=m_c, n="n0 + lj",
                                                                 extra={e_name: f"{e0} + ee"} | self.key_side())))
                            for e0, ew in self.e_chunks(op.value_index)]
                v.w_at = self.weight_at()
                v.pair = self.value_pairs.get(op.name)
                if v.pair:
                    lanes = "T.ramp(iv * 16, 1, 16)"
                    w0, w1 = f"{v.weights}[2 * lj2, {lanes}]", f"{v.weights}[2 * lj2 + 1, {lanes}]"
                    v.pair = v.pair | {"p": pack_vector(w0, f"T.Select(2 * lj2 + 1 < {nkeys}, {w1}, "
                                                                  f"T.Broadcast(T.float32(0.0), 16))")}
            if op.kind in (Kind.ROW_REDUCE, Kind.VALUE):
                for m, base in op.rescale:
                    if m not in corr_done:
                        corr_done.add(m)
                        fl = dict(flags)
                        fl["prev__" + m] = (True, False)
                        d = Expr(Op.SUB, (Expr.read("prev__" + m, (Sub(q),)), Expr.read(m, (Sub(q),))))
                        e = Expr(Op.EXP if base == "exp" else Op.EXP2, (d,))
                        cctx = self.ctx(tag=f"s_{variant}_corr_{m}_", lane="li", lanes=cfg.BLOCK_M, fast=True,
                                        flags=fl, coords=self.coords(m=m_c, n=n_c))
                        v.corr.append((f"r_corr__{m}", e, cctx))
                    v.rescale.append(f"r_corr__{m}")
            out.append(v)
            views[op.name] = v
        if out_stage:
            first = OpView("STAGE", "inputs")
            first.stage = out_stage
            # after the score tiles (which do not read them), before the first tile expression
            k = next((j for j, v in enumerate(out) if v.kind != "SCORE"), len(out))
            out.insert(k, first)
        return out

    # -- the contexts of a key-tile body (decode.py gives its own) ---------------------
    def tile_ctx(self, tag: str, fast: bool, flags: dict, mask, alias: dict, m_c: str, n_c: str) -> Ctx:
        """An [m, n] tile expression: vectorised along the rows."""
        return self.ctx(tag=tag, lane="li", lanes=self.cfg.BLOCK_M, fast=True, flags=flags, mask=mask,
                        coords=self.coords(m=m_c, n=n_c), alias=alias)

    def reduce_ctx(self, tctx: Ctx, fast: bool) -> Ctx:
        """A row reduction's expression: the tile's context here (one row per lane)."""
        return tctx

    def score_key_ctx(self, op, tag: str, fast: bool, m_c: str) -> Ctx:
        """The key-side operand of a score: one key's row per ``jj`` of the register tile."""
        return self.ctx(tag=tag + "k", lane="ii", lanes=self.cfg.SCORE_RI, fast=True, flags={},
                        coords=self.score_key_coords(op, fast, m_c, "lf"))

    def score_key_coords(self, op, fast: bool, m_c: str, f: str) -> dict:
        n_k = "n0 + jt * {RJ} + jj".format(RJ=self.cfg.SCORE_RJ)
        if not fast:
            n_k = f"T.min({n_k}, {self.size(self.kp.key)} - 1)"
        return self.coords(m=m_c, n=n_k, f=f, fname=op.contract)

    # -- bf16 pair dot products (pairs.py) ------------------------------------------
    def _bf16_read(self, e: Expr, last: str) -> bool:
        """``e`` reads a bf16 input whose last index is ``last`` (its pairs adjacent in memory)."""
        name, subs = e.arg
        return self.loads.get(name) == "bfloat16" and subs[-1].index == last and subs[-1].div is None

    def score_pairs(self, op) -> bool:
        """Whether the score ``op`` runs on vdpbf16ps: bf16 operands and an even contraction size."""
        return (self.pairs and self.static[op.contract] % 2 == 0 and self._bf16_read(op.key_read, op.contract)
                and self._bf16_read(op.query_read, op.contract))

    def value_pairs_ok(self, op) -> bool:
        """Whether the value product ``op`` runs on vdpbf16ps: a bf16 value read, register tiles of
        whole vectors, an even key tile."""
        return (self.pairs and self._bf16_read(op.value_read, op.value_index) and self.cfg.BLOCK_N % 2 == 0
                and all(ew % LANES == 0 for _, ew in self.e_chunks(op.value_index)))

    def add_value_pairs(self, op) -> dict:
        """The packed V and P tiles of a value product and the texts that fill V's."""
        cfg, e = self.cfg, op.value_index
        E = self.static[e]
        self.buffers.append({"name": f"v2_{op.name}", "shape": _tup([str(cfg.BLOCK_N // 2), str(E)]),
                             "dtype": "int32"})
        self.buffers.append({"name": f"p2_{op.name}", "shape": _tup([str(cfg.BLOCK_N // 2), str(cfg.BLOCK_M)]),
                             "dtype": "int32"})

        def ref(n: str) -> str:
            return input_ref(op.value_read, self.coords(n=n, extra={e: "ee"}))
        return {"E": E, "v": pack(ref("n0 + 2 * lj2"), ref("n0 + 2 * lj2 + 1")),
                "v_last": f'T.Cast("int32", {ref("n0 + nv - 1")})'}

    def key_coord(self, fast: bool) -> str:
        """The key of lane ``lj`` in a tile expression (the loops stop at the last valid key)."""
        return "n0 + lj"

    def key_side(self) -> dict:
        """Coordinates that the reads shared by every row of a task (K, V) take instead."""
        return {}

    def weight_at(self) -> str:
        """The P.V loop's read of the weights tile, row ``it * PV_RM + ii`` at key ``lj``."""
        return f"[lj, it * {self.cfg.PV_RM} + ii]"

    def fused_reductions(self, p, fast: bool) -> dict:
        return fuse_row_reductions(self.kp, p, fast)

    def staged_reads(self, p) -> dict:
        """Buffers ``x_<pass>_<k>`` for the dense [.., m, n] input reads of the pass (the
        ``stage_dense_reads`` rule): read -> buffer name."""
        found: dict = {}
        for k, e in enumerate(stage_dense_reads(self.kp, p)):
            found[e] = f"x_{p.index}_{k}"
            self.buffers.append({"name": found[e], "shape": _tup([str(self.cfg.BLOCK_M), str(self.cfg.BLOCK_N)])})
        return found

    # -- the split key loop (KV_SPLITS > 1) ------------------------------------------
    def split_view(self) -> dict:
        """What the template needs to store each part's state to the workspace and merge the
        parts' states per row (``compiler.splits.merges``): slots, merges, the merge loop's buffers."""
        kp, cfg, q = self.kp, self.cfg, self.kp.query
        layout, width = split_layout(kp, cfg, self.static)
        at = {name: off for name, off, _ in layout}

        def slot(name: str) -> dict:
            dims = self.rows[name]
            feat = [(f"l_{d}", self.static[d]) for d in dims if d != q]
            return {"buf": f"r_{name}", "off": at[name], "feat": feat, "has_query": q in dims,
                    "rows": cfg.BLOCK_M if q in dims else 1, "stride": feat[0][1] if feat else 1}

        buffers = [b for b in self.buffers if b["name"].startswith("r_")]
        for m in kp.passes[0].stabilisers:
            self.rows["part__" + m] = self.rows[m]
            buffers.append({"name": f"r_part__{m}", "shape": _tup([str(cfg.BLOCK_M)])})
        # every row value may be infinite here: the masked-row rules are printed wherever they apply
        flags = dict(self.input_flags) | {name: (True, True) for name in self.rows}
        coords = self.coords(m=f"T.min(m0 + li, {self.size(q)} - 1)")
        merges = []
        for mg in split_merges(kp):
            v = slot(mg.name) | {"how": mg.how, "name": mg.name}
            if mg.how in ("max", "min"):
                v["identity"] = fconst(-float("inf") if mg.how == "max" else float("inf"))
            elif mg.how == "sum":
                v["identity"], v["corr"] = fconst(0.0), []
                for m, base in mg.rescale:
                    # the tile loop's online rescale base(m_old - m) with the part's m as m_old
                    d = Expr(Op.SUB, (Expr.read("part__" + m, (Sub(q),)), Expr.read(m, (Sub(q),))))
                    e = Expr(Op.EXP if base == "exp" else Op.EXP2, (d,))
                    cx = self.ctx(tag=f"s_merge_{mg.name}_corr_{m}_", lane="li", lanes=cfg.BLOCK_M, fast=True,
                                  flags=flags | {"part__" + m: (True, False)}, coords=coords)
                    v["corr"].append({"part": f"r_part__{m}", "off": at[m], "buf": f"r_corr__{m}",
                                      "expr": e, "ctx": cx})
            else:
                v["expr"] = mg.expr
                v["ctx"] = self.ctx(tag=f"s_merge_{mg.name}_", lane="li", lanes=cfg.BLOCK_M, fast=True,
                                    flags=flags, coords=coords)
            merges.append(v)
        return {"width": width, "slots": [slot(name) for name, _, _ in layout], "merges": merges,
                "buffers": buffers, "per": f"T.floordiv({self.ktiles} + {self.splits - 1}, {self.splits})"}

    # -- e chunks of the P.V register tiles ------------------------------------------
    def e_chunks(self, e: str) -> list[tuple[int, int]]:
        """(first column, width) of the P.V register tiles over the value index ``e``."""
        E = self.static[e]
        step = self.cfg.PV_E
        return [(e0, min(step, E - e0)) for e0 in range(0, E, step)]


def _tup(xs) -> str:
    xs = list(xs)
    return "(" + ", ".join(xs) + ("," if len(xs) == 1 else "") + ")"


def _tile_read(e: Expr, tiles: set[str]) -> str | None:
    return e.arg[0] if e.op is Op.READ and e.arg[0] in tiles else None


# -- tile classification from the corners ------------------------------------------

def classify_tile(pred: Expr, query: str, key: str) -> tuple[str, str]:
    """TIR texts (full, empty) of a predicate affine in (query, key) over the tile
    [m0, m0 + mv) x [n0, n0 + nv), from the extremes of each atom at the corners."""
    lo = {query: 'T.Cast("float32", m0)', key: 'T.Cast("float32", n0)'}
    hi = {query: 'T.Cast("float32", m0 + mv - 1)', key: 'T.Cast("float32", n0 + nv - 1)'}

    def const_text(e: Expr) -> str:
        ctx = Ctx(coords={}, local={}, lane="li", lanes=1, fast=False)
        return lower(e, ctx).value

    def rng(a) -> tuple[str, str]:
        parts_min, parts_max = [const_text(a.const)], [const_text(a.const)]
        for idx, coef in ((query, a.cm), (key, a.cn)):
            if coef == 0:
                continue
            small, big = (lo[idx], hi[idx]) if coef > 0 else (hi[idx], lo[idx])
            parts_min.append(f"{fconst(coef)} * {small}")
            parts_max.append(f"{fconst(coef)} * {big}")
        return "(" + " + ".join(parts_min) + ")", "(" + " + ".join(parts_max) + ")"

    def leaf(e: Expr) -> tuple[str, str]:
        dmin, dmax = rng(atom(e, query, key))
        z = "T.float32(0.0)"
        table = {
            Op.LT: (f"({dmax} < {z})", f"({dmin} >= {z})"),
            Op.LE: (f"({dmax} <= {z})", f"({dmin} > {z})"),
            Op.GT: (f"({dmin} > {z})", f"({dmax} <= {z})"),
            Op.GE: (f"({dmin} >= {z})", f"({dmax} < {z})"),
            Op.EQ: (f"T.And({dmin} == {z}, {dmax} == {z})", f"T.Or({dmax} < {z}, {dmin} > {z})"),
            Op.NE: (f"T.Or({dmax} < {z}, {dmin} > {z})", f"T.And({dmin} == {z}, {dmax} == {z})"),
        }
        return table[e.op]

    return tile_decision(pred, leaf, lambda a, b: f"T.And({a}, {b})", lambda a, b: f"T.Or({a}, {b})")


# -- the workspace of a split key loop ------------------------------------------------

def split_layout(kp: KernelPlan, cfg: CpuConfig, static: dict[str, int]) -> tuple[tuple, int]:
    """``((state, offset, floats), ...), floats per part``: where each per-row state of the
    (one) pass lies in a part's slot of the float32 workspace (the row buffer, flattened)."""
    out, off = [], 0
    for op in kp.passes[0].state:
        feat = [d for d in op.dims if d not in kp.rowdims]
        size = (cfg.BLOCK_M if kp.query in op.dims else 1) * math.prod(static[d] for d in feat)
        out.append((op.name, off, size))
        off += size
    return tuple(out), off


def workspace_numel(kp: KernelPlan, cfg: CpuConfig, static: dict[str, int], sizes: dict) -> int:
    """Floats of the workspace a kernel with ``KV_SPLITS > 1`` takes: a slot per (task, part)."""
    if cfg.decode:           # row blocks of PACK heads x BLOCK_M query rows
        from .config import decode_tasks
        tasks = decode_tasks(kp, sizes, cfg.BLOCK_M, cfg.PACK)
        cfg = dataclasses.replace(cfg, BLOCK_M=cfg.rows())
    else:
        tasks = math.prod(int(sizes[g]) for g in kp.grid) * -(-int(sizes[kp.query]) // cfg.BLOCK_M)
    return tasks * cfg.KV_SPLITS * split_layout(kp, cfg, static)[1]
