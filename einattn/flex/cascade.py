"""The zoo-shaped cascade a FlexAttention call computes, around the mods' expressions."""
from __future__ import annotations

from dataclasses import dataclass

from einattn.ir import Cascade, Expr, Op, ParamDecl, Reduce, Stmt, Sub, TensorDecl, verify

from .convert import INDICES, SCORE, Captured


@dataclass(frozen=True)
class FlexCascade:
    """A traced FlexAttention call: the cascade and the captured tensors it reads (inputs after
    Q, K, V, in order)."""
    cascade: Cascade
    captured: tuple[Captured, ...]
    hash: str = ""                  # cascade.structural_hash(), computed once per trace
    reusable: bool = True           # False when a constant was computed from a captured tensor's values


def _read(t: str, *subs) -> Expr:
    return Expr.read(t, tuple(s if isinstance(s, Sub) else Sub(s) for s in subs))


def build_cascade(score: Expr | None, mask: Expr | None, captured=(), *, gqa: bool = False,
                  lse: bool = False) -> Cascade:
    """The zoo-shaped cascade around a score_mod expression (over ``S[b,h,m,n]``) and a mask
    expression; None for either means none. With ``gqa`` K and V have ``g`` heads, read at
    ``h // r`` with ``r = h // g`` (examples/gqa.yaml); ``lse`` adds ``lse = M + log(L)``.
    Without mods it is the zoo's softmax, with ``kv_idx <= q_idx`` its causal (same hash)."""
    kh = Sub("h", "r") if gqa else Sub("h")
    kv = "g" if gqa else "h"
    inputs = [TensorDecl("Q", ("b", "h", "m", "d")), TensorDecl("K", ("b", kv, "n", "d")),
              TensorDecl("V", ("b", kv, "n", "e")), *(TensorDecl(c.name, c.subs) for c in captured)]
    params = [ParamDecl("scale", Expr(Op.DIV, (Expr.const(1.0), Expr(Op.SQRT, (Expr(Op.INDEX, (), "d"),)))))]
    if gqa:
        params.append(ParamDecl("r", Expr(Op.FLOORDIV, (Expr(Op.INDEX, (), "h"), Expr(Op.INDEX, (), "g")))))
    row, full = ("b", "h", "m"), INDICES
    qk = Expr(Op.MUL, (_read("Q", "b", "h", "m", "d"), _read("K", "b", kh, "n", "d")))
    stmts = [Stmt("S", full, Reduce.SUM, Expr(Op.MUL, (qk, Expr(Op.PARAM, (), "scale"))))]
    x = "S"
    if mask is not None:
        x = "Sm"
        masked = Expr(Op.WHERE, (mask, score or SCORE, Expr.const(float("-inf"))))
        stmts.append(Stmt(x, full, Reduce.SUM, masked))
    elif score is not None:
        x = "T"
        stmts.append(Stmt(x, full, Reduce.SUM, score))
    pv = Expr(Op.MUL, (_read("P", *full), _read("V", "b", kh, "n", "e")))
    stmts += [Stmt("M", row, Reduce.MAX, _read(x, *full)),
              Stmt("P", full, Reduce.SUM, Expr(Op.EXP, (Expr(Op.SUB, (_read(x, *full), _read("M", *row))),))),
              Stmt("L", row, Reduce.SUM, _read("P", *full)),
              Stmt("O", ("b", "h", "m", "e"), Reduce.SUM, Expr(Op.DIV, (pv, _read("L", *row))))]
    if lse:
        stmts.append(Stmt("lse", row, Reduce.SUM,
                          Expr(Op.ADD, (_read("M", *row), Expr(Op.LOG, (_read("L", *row),))))))
    outputs = ("O", "lse") if lse else ("O",)
    return verify(Cascade(tuple(inputs), tuple(params), tuple(stmts), outputs, name="flex", file="<flex>"))
