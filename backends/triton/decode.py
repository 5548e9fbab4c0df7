"""The Triton decode program (``templates/triton/decode.py.jinja``) and the per-call choice of program.

A call with few query rows (decoding, short chunks) is bound by reading K and V.
The decode program packs the rows of ``PACK`` heads that read the same K/V rows
(a GQA group, ``compiler.decode.packing``) times ``BLOCK_Q`` query rows each into
one row block of ``BLOCK_M`` rows (``PACK * BLOCK_Q`` rounded up to a power of two >= 16,
``tl.dot``'s minimum), so each K/V tile is loaded once per row block instead of once per head.
Row ``r`` is head ``h0 + r // BLOCK_Q`` and query ``start_m + r % BLOCK_Q``. The
renderer is the tile program's (:class:`render.Renderer`) with two changes: the
packed head is a per-row coordinate (``row_<h>``) in every read except the
key-side ones (the score's key operand and the value reads: ``idx_<h>``, the
pack's first head, valid because all packed heads read the same rows), and the
mask bounds span ``BLOCK_Q`` query rows. The key loop splits (``KV_SPLITS``) and
merges as in the tile program (``compiler.splits``).

:func:`config.resolve` turns a config into the concrete one a call runs: the program
(``PROGRAM``, or ``compiler.decode.choose_program`` for "auto"), and for the
decode program ``PACK`` (``pack_size``) and ``KV_SPLITS`` (``split_count`` over the
target's SMs/CUs) where the config leaves them 0 ("chosen per call").
"""
from __future__ import annotations

from einattn.compiler import decode as plan_decode
from einattn.compiler.kernel_plan import KernelPlan

from .config import TritonConfig, decode_rows, grid_size, resolve
from .hardware import HardwareTarget
from .render import Rendered, Renderer

DECODE_TEMPLATE = ("triton", "decode.py.jinja")


class DecodeRenderer(Renderer):
    """The decode program of a kernel plan (see the module docstring)."""
    TEMPLATE = DECODE_TEMPLATE
    QUERY_SPAN = "BLOCK_Q"

    def __init__(self, kp: KernelPlan):
        super().__init__(kp)
        self.packing = plan_decode.packing(kp)
        if self.packing.index is not None:
            self.printer.per_row = {self.packing.index: f"row_{self.packing.index}"}

    def constexprs(self, split: bool) -> tuple[str, ...]:
        base = super().constexprs(split)
        at = base.index("DOT_PRECISION")
        return (*base[:at], "BLOCK_Q", "PACK", *base[at:])

    def packed_index(self) -> str | None:
        return self.packing.index

    def parts(self, split: bool) -> dict:
        h = self.packing.index
        rows = [] if h is None else [
            f"head_{h} = idx_{h} + rows // BLOCK_Q",
            f"mask_m = mask_m & (head_{h} < size_{h})",
            f"row_{h} = tl.minimum(head_{h}, size_{h} - 1)      # clamped: masked rows read a valid head"]
        return {**super().parts(split), "row_lines": rows, "packed": h or "", "packing": str(self.packing)}


def render_decode(kp: KernelPlan, split: bool = False) -> Rendered:
    """Triton source of the decode program of ``kp`` (``split``: the key loop in ``KV_SPLITS`` parts
    plus the combine kernel).

    >>> from einattn.compiler import make_plan
    >>> from einattn.compiler.kernel_plan import make_kernel_plan
    >>> from einattn.specs import load_spec
    >>> r = render_decode(make_kernel_plan(make_plan(load_spec("gqa"))))
    >>> "row_h = " in r.source, "BLOCK_Q" in r.constexprs
    (True, True)
    """
    return DecodeRenderer(kp).render(split)


def render_program(kp: KernelPlan, program: str, split: bool) -> Rendered:
    from .render import render
    return render_decode(kp, split) if program == "decode" else render(kp, split)


def launch_grid(kp: KernelPlan, cfg: TritonConfig, sizes: dict) -> tuple[int, int]:
    """(programs along axis 0, along axis 1) of a concrete config's program at ``sizes``."""
    m, slices = int(sizes[kp.query]), grid_size(kp, sizes)
    if cfg.PROGRAM != "decode":
        return -(-m // cfg.BLOCK_M), slices
    q, _ = decode_rows(m, cfg.BLOCK_M, cfg.PACK)
    h = plan_decode.packing(kp).index
    if h is not None:
        slices = slices // int(sizes[h]) * -(-int(sizes[h]) // cfg.PACK)
    return -(-m // q), slices


def describe_program(kp: KernelPlan, cfg: TritonConfig, sizes: dict, params: dict, hw: HardwareTarget) -> str:
    """Which program a call at ``sizes`` gets and how it is laid out (what ``explain`` prints)."""
    got, why = resolve(kp, cfg, sizes, params, hw)
    if got.PROGRAM == "tile":
        return f"program: tile ({why}); BLOCK_M={got.BLOCK_M}, BLOCK_N={got.BLOCK_N}, KV_SPLITS={got.KV_SPLITS}"
    q, rows = decode_rows(int(sizes[kp.query]), got.BLOCK_M, got.PACK)
    g0, g1 = launch_grid(kp, got, sizes)
    return (f"program: decode ({why}); {plan_decode.packing(kp)}; PACK={got.PACK} head(s) x BLOCK_Q={q} query "
            f"row(s) in a row block of BLOCK_M={rows} rows; {g0 * g1} row block(s), KV_SPLITS={got.KV_SPLITS} "
            f"(over {hw.sms} {'SMs' if hw.kind == 'cuda' else 'CUs'}), BLOCK_N={got.BLOCK_N}")


def workspace_shapes(r: Rendered, kp: KernelPlan, sizes: dict, cfg: TritonConfig) -> dict:
    """The fp32 workspace of each state of a split decode kernel: [KV_SPLITS, programs of axis 1,
    programs of axis 0 x BLOCK_M(, padded value width)], as its kernels index it."""
    from .abi import next_pow2
    g0, g1 = launch_grid(kp, cfg, sizes)
    _, rows = decode_rows(int(sizes[kp.query]), cfg.BLOCK_M, cfg.PACK)
    base = [cfg.KV_SPLITS, g1, g0 * rows]
    return {w: base + ([next_pow2(int(sizes[e]))] if e is not None else []) for w, e in r.workspaces}
