"""The einsum cascade: statements, tensor and param declarations, the whole cascade.

Locations are carried for error messages but excluded from equality and from
the canonical JSON, so formatting and the spec's ``name``/``doc`` never change
the structural hash.
"""
from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field, replace

from .errors import Loc
from .expr import Expr


class Reduce(enum.Enum):
    SUM = "="
    MAX = "max="
    MIN = "min="

    @property
    def identity(self) -> float:
        return {Reduce.SUM: 0.0, Reduce.MAX: float("-inf"), Reduce.MIN: float("inf")}[self]


@dataclass(frozen=True, slots=True)
class TensorDecl:
    name: str
    indices: tuple[str, ...]
    loc: Loc | None = field(default=None, compare=False)

    def to_json(self):
        return {"name": self.name, "indices": list(self.indices)}


@dataclass(frozen=True, slots=True)
class ParamDecl:
    name: str
    expr: Expr
    loc: Loc | None = field(default=None, compare=False)

    def to_json(self):
        return {"name": self.name, "expr": self.expr.to_json()}


@dataclass(frozen=True, slots=True)
class BlockDecl:
    """Block index ``name`` of ``index`` in blocks of ``size`` (a param): coordinate j stands for
    the values j*size .. j*size + size - 1 of ``index``; its size is ceil(size(index) / size).
    A tensor with a block dim is read along ``index`` as ``T[.., index // size, ..]``."""
    name: str
    index: str
    size: str
    loc: Loc | None = field(default=None, compare=False)

    def to_json(self):
        return {"name": self.name, "index": self.index, "size": self.size}

    def __str__(self) -> str:
        return f"{self.name} = {self.index} // {self.size}"


SELECTIONS = ("topk", "topp")


@dataclass(frozen=True, slots=True)
class Stmt:
    """``name[indices] <reduce> expr``; indices on the right only are reduced."""
    name: str
    indices: tuple[str, ...]
    reduce: Reduce
    expr: Expr
    loc: Loc | None = field(default=None, compare=False)
    # set by the online-rescaling rewrite on running sums: ((stabiliser, "exp"|"exp2"), ...);
    # the accumulator is multiplied by base**(old - new) whenever the stabiliser moves
    rescale: tuple[tuple[str, str], ...] = ()
    # a selection statement (spec v1.1): ("topk" | "topp", amount); the value is 1.0 at the kept
    # coordinates of the last left-hand index (a block index) and 0.0 elsewhere (docs/spec.md)
    select: tuple = ()

    @property
    def reduced(self) -> tuple[str, ...]:
        return tuple(i for i in self.expr.indices() if i not in self.indices)

    @property
    def all_indices(self) -> tuple[str, ...]:
        return self.indices + self.reduced

    def to_json(self):
        out = {"name": self.name, "indices": list(self.indices), "reduce": self.reduce.value,
               "expr": self.expr.to_json()}
        if self.rescale:
            out["rescale"] = [list(r) for r in self.rescale]
        if self.select:
            out["select"] = [self.select[0], self.select[1].to_json()]
        return out

    def __str__(self) -> str:
        rhs = f"{self.select[0]}({self.expr}, {self.select[1]})" if self.select else str(self.expr)
        s = f"{self.name}[{','.join(self.indices)}] {self.reduce.value} {rhs}"
        for m, base in self.rescale:
            s += f"    (running sum, rescaled by {base}(old {m} - new {m}))"
        return s


@dataclass(frozen=True, slots=True)
class Cascade:
    inputs: tuple[TensorDecl, ...]
    params: tuple[ParamDecl, ...]
    stmts: tuple[Stmt, ...]
    outputs: tuple[str, ...]
    key: str = "n"
    name: str = field(default="cascade", compare=False)
    doc: str = field(default="", compare=False)
    file: str = field(default="<spec>", compare=False)
    blocks: tuple[BlockDecl, ...] = ()          # block indices (spec v1.1)

    # -- lookups --------------------------------------------------------------
    def input(self, name: str) -> TensorDecl | None:
        return next((t for t in self.inputs if t.name == name), None)

    def stmt(self, name: str) -> Stmt | None:
        return next((s for s in self.stmts if s.name == name), None)

    def dims_of(self, tensor: str) -> tuple[str, ...]:
        """Declared index names of an input or a statement's left side."""
        t = self.input(tensor)
        if t is not None:
            return t.indices
        return self.stmt(tensor).indices

    @property
    def index_names(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for t in self.inputs:
            seen.update(dict.fromkeys(t.indices))
        seen.update(dict.fromkeys(b.name for b in self.blocks))
        for s in self.stmts:
            seen.update(dict.fromkeys(s.all_indices))
        return tuple(seen)

    @property
    def selects(self) -> bool:
        """Spec v1.1: block indices or selection statements (compiler/selection.py splits it)."""
        return bool(self.blocks) or any(s.select for s in self.stmts)

    def with_stmts(self, stmts) -> "Cascade":
        return replace(self, stmts=tuple(stmts))

    def with_params(self, params) -> "Cascade":
        return replace(self, params=tuple(params))

    # -- canonical form -------------------------------------------------------
    def to_json(self) -> dict:
        out = {"einattn": 1, "key": self.key,
               "inputs": [t.to_json() for t in self.inputs],
               "params": [p.to_json() for p in self.params],
               "cascade": [s.to_json() for s in self.stmts],
               "outputs": list(self.outputs)}
        if self.blocks:                 # v1 cascades keep their hashes
            out["blocks"] = [b.to_json() for b in self.blocks]
        return out

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def structural_hash(self) -> str:
        """sha256 of the canonical JSON (first 16 hex digits)."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def dependency_graph(self):
        """networkx DiGraph: producer -> consumer, nodes are inputs and statements.

        Node attribute ``kind`` is ``"input"`` or ``"stmt"``; statement nodes carry
        ``stmt``.
        """
        import networkx as nx
        g = nx.DiGraph()
        for t in self.inputs:
            g.add_node(t.name, kind="input")
        for s in self.stmts:
            g.add_node(s.name, kind="stmt", stmt=s)
            for r in s.expr.reads():
                g.add_edge(r, s.name)
        return g

    def __str__(self) -> str:
        lines = ["inputs: " + ", ".join(f"{t.name}[{','.join(t.indices)}]" for t in self.inputs)]
        if self.blocks:
            lines.append("blocks: " + ", ".join(map(str, self.blocks)))
        if self.params:
            lines.append("params: " + ", ".join(f"{p.name} = {p.expr}" for p in self.params))
        lines += [f"  {s}" for s in self.stmts]
        lines.append("outputs: " + ", ".join(self.outputs))
        return "\n".join(lines)
