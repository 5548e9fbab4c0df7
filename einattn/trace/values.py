"""The values the converter gives graph nodes: dimension atoms, tensors as expressions, size scalars.

A tensor value is an expression over *atoms* (``INDEX``/``READ`` subscripts named ``_<id>``) and
a list of dims, each a group of atoms (one atom usually; several where a ``view`` merged dims for a
``bmm``). Atoms are union-find variables: an elementwise op or a contraction that lines two dims up
unifies their atoms, so dimension identity is structural, never taken from shape symbols (which
export merges when code forces equal sizes and keeps apart otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from einattn.ir import Expr, Op, Sub, UnsupportedError


@dataclass
class Atom:
    size: object          # sympy expression of the size (a symbol, or an int where export specialised)
    hint: int             # its value at the traced call
    repeat: bool = False  # made by expanding a size-1 dim: the value does not vary along it


@dataclass
class Atoms:
    """Union-find over atoms; ``grouped[a] = (x, r)`` records GQA: atom ``a`` reads as ``x // r``."""
    atoms: list[Atom] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    grouped: dict[int, tuple[int, int]] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)   # size-1 input dims broadcast against a larger dim

    def new(self, size, hint: int, repeat: bool = False) -> int:
        self.atoms.append(Atom(size, int(hint), repeat))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            # keep the root that is a real (non-repeat) atom
            if self.atoms[a].repeat and not self.atoms[b].repeat:
                a, b = b, a
            self.parent[b] = a

    def hint(self, a: int) -> int:
        return self.atoms[self.find(a)].hint

    def of(self, a: int) -> Atom:
        return self.atoms[self.find(a)]


def name(a: int) -> str:
    return f"_{a}"


def atom_of(n: str) -> int:
    return int(n[1:])


@dataclass(frozen=True)
class T:
    """A tensor value: ``expr`` at each coordinate; ``dims`` a tuple of atom groups."""
    expr: Expr
    dims: tuple[tuple[int, ...], ...]
    boolean: bool = False

    def used(self) -> set[int]:
        return {atom_of(i) for i in self.expr.indices()}


@dataclass(frozen=True)
class Cat:
    """A tensor concatenated along ``dim`` (a sink column beside the scores): its pieces, each a
    value whose dim ``dim`` is one group; reductions over ``dim`` combine the pieces' results."""
    pieces: tuple[T, ...]
    dim: int
    node: object = None          # the torch.cat node (named in errors)

    @property
    def dims(self):
        return self.pieces[0].dims


@dataclass(frozen=True)
class Scalar:
    """A number computed from sizes (``q.shape[-1] ** -0.5``): an expression over atom sizes in
    param syntax (an index name in a param means that dim's size)."""
    expr: Expr
    hint: float


def index(a: int) -> Expr:
    return Expr(Op.INDEX, (), name(a))


def read(tensor: str, atoms) -> Expr:
    return Expr.read(tensor, tuple(Sub(name(a)) for a in atoms))


def sym_expr(size, symbols: dict) -> Expr:
    """A sympy size expression as a param-space Expr (symbols -> the atom that declared them)."""
    if isinstance(size, (int, sympy.Integer)):
        return Expr.const(int(size))
    if isinstance(size, sympy.Symbol):
        if size not in symbols:
            raise UnsupportedError(f"size symbol {size} does not come from an input dimension")
        return index(symbols[size])
    for kind, op in ((sympy.Mul, Op.MUL), (sympy.Add, Op.ADD)):
        if isinstance(size, kind):
            out = None
            for f in size.args:
                e = sym_expr(f, symbols)
                out = e if out is None else Expr(op, (out, e))
            return out
    if type(size).__name__ == "FloorDiv":
        return Expr(Op.FLOORDIV, (sym_expr(size.args[0], symbols), sym_expr(size.args[1], symbols)))
    raise UnsupportedError(f"a size computed as {size} (only products, sums and floor division of "
                           f"input sizes are supported)")
