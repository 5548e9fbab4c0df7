"""Spec format v1 and v1.1 (YAML) -> :class:`Cascade`.

YAML is read with ``safe_load`` semantics (``yaml.compose`` on the SafeLoader,
kept as nodes so every error can name its line); expressions are parsed with
``ast`` and converted through a whitelist, never evaluated. See docs/spec.md.
"""
from __future__ import annotations

import ast
import difflib
import keyword
import re

import yaml

from .cascade import SELECTIONS, BlockDecl, Cascade, ParamDecl, Reduce, Stmt, TensorDecl
from .errors import Loc, SpecError
from .expr import FUNCTIONS, Expr, Op, Sub
from .verify import verify

TOP_KEYS = ("einattn", "name", "doc", "inputs", "params", "blocks", "cascade", "outputs", "key_index")
VERSIONS = {1: "1", 1.1: "1.1"}
REQUIRED = ("einattn", "name", "inputs", "cascade", "outputs")
# Levels of one expression (a name or number is 1, each operator or call adds one). Far above any
# real variant (the zoo needs 4) and far below what the recursive passes, renderers and CPython's
# parser (200 nested parentheses) can take, so a too-deep expression is this clear error.
MAX_DEPTH = 64
MAX_STMT_CHARS = 4000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STMT = re.compile(r"^\s*(?P<lhs>[A-Za-z_]\w*)\s*(?:\[(?P<idx>[^\]]*)\])?\s*(?P<op>max=|min=|=)(?P<rhs>.*)$",
                   re.S)
_BINOPS = {ast.Add: Op.ADD, ast.Sub: Op.SUB, ast.Mult: Op.MUL, ast.Div: Op.DIV,
           ast.FloorDiv: Op.FLOORDIV, ast.Mod: Op.MOD, ast.Pow: Op.POW,
           ast.BitAnd: Op.AND, ast.BitOr: Op.OR}
_CMPOPS = {ast.Lt: Op.LT, ast.LtE: Op.LE, ast.Gt: Op.GT, ast.GtE: Op.GE, ast.Eq: Op.EQ, ast.NotEq: Op.NE}
RESERVED = set(FUNCTIONS) | set(SELECTIONS) | {"inf"} | set(keyword.kwlist)
_BLOCK = re.compile(r"^\s*(?P<index>[A-Za-z_]\w*)\s*//\s*(?P<size>[A-Za-z_]\w*)\s*$")


def _loc(file: str, node) -> Loc:
    m = node.start_mark
    return Loc(file, m.line + 1, m.column + 1)


def _hint(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"did you mean '{close[0]}'?" if close else ""


def _scalar(node, file: str, what: str):
    if not isinstance(node, yaml.ScalarNode):
        raise SpecError(f"{what} must be a single value", loc=_loc(file, node),
                        found=type(node).__name__.replace("Node", "").lower())
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        raise SpecError(f"{what} cannot be read", loc=_loc(file, node),
                        expected="a plain value (no YAML tags or merge keys)",
                        found=str(getattr(e, "problem", None) or e)[:80]) from None


def _locator(node, text: str, file: str, value: str):
    """offset in the scalar's value -> Loc in the file (plain and quoted, folded lines too)."""
    start = _loc(file, node)
    try:
        src = text[node.start_mark.index:node.end_mark.index]
    except (AttributeError, TypeError):
        return start.shift
    pos: list[tuple[int, int]] = []
    line, col0 = start.line, start.col
    if node.style in ("'", '"'):
        src, col0 = src[1:-1], col0 + 1
    parts = src.split("\n")
    pieces = []
    for k, raw in enumerate(parts):
        piece = raw if k == 0 else raw.lstrip()
        c = col0 if k == 0 else 1 + len(raw) - len(piece)
        piece = piece.rstrip()
        if pieces and piece:
            pos.append(pos[-1])           # the folded space
        if piece:
            pos.extend((line + k, c + j) for j in range(len(piece)))
            pieces.append(piece)
    if " ".join(pieces) != value:
        return start.shift
    return lambda k: Loc(file, *pos[k]) if 0 <= k < len(pos) else start.shift(k)


def _ident(name, loc: Loc, what: str) -> str:
    if isinstance(name, bool):
        raise SpecError(f"bad {what} name", loc=loc, expected="an identifier",
                        found=f"the boolean {name} (YAML reads off/on/yes/no/true/false as booleans)",
                        fix='quote the name, e.g. "off": n - m')
    if not isinstance(name, str) or not _IDENT.match(name):
        raise SpecError(f"bad {what} name", loc=loc, expected="an identifier such as 'Q' or 'm'",
                        found=repr(name))
    if name in RESERVED:
        raise SpecError(f"{what} name '{name}' is reserved", loc=loc,
                        expected="a name that is not a function, keyword or 'inf'",
                        fix=f"rename '{name}'")
    return name


def _mapping(node, file: str, what: str) -> list[tuple[str, object, Loc]]:
    if not isinstance(node, yaml.MappingNode):
        raise SpecError(f"'{what}' must be a mapping", loc=_loc(file, node),
                        expected=f"'{what}:' followed by indented 'name: value' lines",
                        found=type(node).__name__.replace("Node", "").lower())
    out, seen = [], set()
    for k, v in node.value:
        key = _scalar(k, file, f"a key of '{what}'")
        loc = _loc(file, k)
        if key in seen:
            raise SpecError(f"duplicate key '{key}' in '{what}'", loc=loc, fix="keep one of them")
        seen.add(key)
        out.append((key, v, loc))
    return out


class _ExprParser:
    """ast -> Expr through a whitelist. ``kind`` is "cascade" or "param"."""

    def __init__(self, file: str, locate, kind: str, params, indices, tensors):
        self.file, self.locate, self.kind, self.lead = file, locate, kind, 0
        self.params, self.indices, self.tensors = params, indices, tensors

    def err(self, node, what, **kw):
        col = getattr(node, "col_offset", 0)
        raise SpecError(what, loc=self.locate(self.lead + col), **kw)

    def parse(self, text: str, select: bool = False):
        """The expression; with ``select``, ``(kind, score, amount)`` where the text is a whole
        ``topk(score, k)`` or ``topp(score, p)`` call (None where it is not)."""
        if len(text) > MAX_STMT_CHARS:
            raise SpecError("expression too long", loc=self.locate(0),
                            expected=f"at most {MAX_STMT_CHARS} characters", found=f"{len(text)}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            lead = len(text) - len(text.lstrip())
            raise SpecError("syntax error in expression", loc=self.locate(lead + (e.offset or 1) - 1),
                            expected="a Python-style expression", found=repr(text.strip()),
                            fix=str(e.msg)) from None
        except (RecursionError, MemoryError, ValueError):
            raise SpecError("expression cannot be parsed", loc=self.locate(0),
                            expected=f"nesting depth at most {MAX_DEPTH}", found=repr(text[:60])) from None
        lead = len(text) - len(text.lstrip())
        self.lead = lead
        b = tree.body
        if select:
            if not (isinstance(b, ast.Call) and isinstance(b.func, ast.Name) and b.func.id in SELECTIONS):
                return None
            f = b.func.id
            if b.keywords or len(b.args) != 2 or any(isinstance(a, ast.Starred) for a in b.args):
                self.err(b, f"'{f}' takes 2 arguments", expected=f"{f}(score, {'k' if f == 'topk' else 'p'})",
                         found=ast.unparse(b)[:60])
            amount = self.conv(b.args[1], 2)
            if not amount.is_scalar():
                self.err(b.args[1], f"the amount of '{f}' must be a number, a param or sizes",
                         found=repr(ast.unparse(b.args[1])), fix="declare it under 'params:'")
            return f, self.conv(b.args[0], 2), amount
        return self.conv(b, 1)

    def conv(self, n, depth: int) -> Expr:
        """``n`` as an Expr; ``depth`` is its level (the whole expression is level 1)."""
        if depth > MAX_DEPTH:
            self.err(n, "expression nested too deeply", expected=f"at most {MAX_DEPTH} levels",
                     found=f"more than {MAX_DEPTH} levels",
                     fix="give a sub-expression its own statement (a chain a + b + ... nests one level per term)")
        d = depth + 1
        if isinstance(n, ast.Constant):
            if isinstance(n.value, bool) or not isinstance(n.value, (int, float)):
                self.err(n, "unsupported constant", expected="a number", found=repr(n.value))
            try:
                return Expr.const(n.value)
            except OverflowError:
                self.err(n, "number out of range", expected="a float64 number", found=f"{str(n.value)[:20]}...")
        if isinstance(n, ast.Name):
            return self.name(n)
        if isinstance(n, ast.Subscript):
            return self.subscript(n)
        if isinstance(n, ast.BinOp):
            op = _BINOPS.get(type(n.op))
            if self.kind == "param" and op in (Op.AND, Op.OR):
                self.err(n, "'&' and '|' are not allowed in params", expected="a numeric expression")
            if op is None:
                self.err(n, "unsupported operator", expected="one of + - * / // % ** & |",
                         found=type(n.op).__name__)
            return Expr(op, (self.conv(n.left, d), self.conv(n.right, d)))
        if isinstance(n, ast.UnaryOp):
            x = self.conv(n.operand, d)
            if isinstance(n.op, ast.USub):
                return Expr.const(-x.arg) if x.op is Op.CONST else Expr(Op.NEG, (x,))
            if isinstance(n.op, ast.UAdd):
                return x
            if isinstance(n.op, ast.Invert):
                if self.kind == "param":
                    self.err(n, "'~' is not allowed in params", expected="a numeric expression")
                return Expr(Op.NOT, (x,))
            self.err(n, "unsupported unary operator", expected="- or ~", found="not",
                     fix="write ~cond for logical negation")
        if isinstance(n, ast.Compare):
            if self.kind == "param":
                self.err(n, "comparisons are not allowed in params", expected="a number")
            d = depth + len(n.ops)      # a < b < c becomes (a < b) & (b < c): one level per extra comparison
            parts, left = [], self.conv(n.left, d)
            for op, right in zip(n.ops, n.comparators):
                cop = _CMPOPS.get(type(op))
                if cop is None:
                    self.err(n, "unsupported comparison", expected="< <= > >= == !=", found=type(op).__name__)
                r = self.conv(right, d)
                parts.append(Expr(cop, (left, r)))
                left = r
            out = parts[0]
            for p in parts[1:]:
                out = Expr(Op.AND, (out, p))
            return out
        if isinstance(n, ast.Call):
            return self.call(n, d)
        if isinstance(n, ast.BoolOp):
            self.err(n, "'and' / 'or' are not supported", expected="& or | between parenthesised comparisons",
                     fix="write (n <= m) & (n > m - W)")
        if isinstance(n, ast.Attribute):
            self.err(n, "attribute access is not allowed", expected="a name, number, read or call",
                     found=f".{n.attr}")
        self.err(n, "unsupported syntax", expected="numbers, names, T[i, j] reads, operators and whitelisted calls",
                 found=type(n).__name__)

    def name(self, n: ast.Name) -> Expr:
        x = n.id
        if x == "inf":
            return Expr.const(float("inf"))
        if x in self.params:
            return Expr(Op.PARAM, (), x)
        if x in self.indices:
            return Expr(Op.INDEX, (), x)
        if x in self.tensors:
            self.err(n, f"tensor '{x}' used without subscripts", expected=f"{x}[{', '.join(self.tensors[x])}]",
                     fix="read a tensor with one index per dimension")
        if x in FUNCTIONS:
            self.err(n, f"function '{x}' used as a value", expected=f"{x}(...)")
        allowed = list(self.params) + list(self.indices) + (list(self.tensors) if self.kind == "cascade" else [])
        self.err(n, f"unknown name '{x}'", expected="a param, an index" + (" or a tensor read" if self.kind == "cascade" else ""),
                 found=x, fix=_hint(x, allowed) or "declare it under 'params:' or as an input index")

    def subscript(self, n: ast.Subscript) -> Expr:
        if self.kind == "param":
            self.err(n, "tensor reads are not allowed in params", expected="numbers, dim sizes and other params")
        if not isinstance(n.value, ast.Name):
            self.err(n, "only named tensors can be read", expected="T[i, j]", found=ast.unparse(n.value)[:40])
        t = n.value.id
        if t not in self.tensors:
            self.err(n, f"unknown tensor '{t}'", expected="an input or a tensor defined by an earlier statement",
                     found=t, fix=_hint(t, self.tensors) or f"declare '{t}' under 'inputs:' or define it first")
        elts = n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]
        subs = []
        for e in elts:
            if isinstance(e, ast.Name) and e.id in self.indices:
                subs.append(Sub(e.id))
            elif (isinstance(e, ast.BinOp) and isinstance(e.op, ast.FloorDiv) and isinstance(e.left, ast.Name)
                  and e.left.id in self.indices and isinstance(e.right, ast.Name) and e.right.id in self.params):
                subs.append(Sub(e.left.id, e.right.id))
            else:
                self.err(e, f"bad subscript of '{t}'", expected="an index name or 'index // param'",
                         found=repr(ast.unparse(e)), fix=f"declared indices are {', '.join(self.indices)}")
        dims = self.tensors[t]
        if len(subs) != len(dims):
            self.err(n, f"'{t}' read with {len(subs)} subscripts", expected=f"{len(dims)} ({t}[{', '.join(dims)}])",
                     found=f"{t}[{', '.join(map(str, subs))}]")
        return Expr.read(t, tuple(subs))

    def call(self, n: ast.Call, d: int) -> Expr:
        if not isinstance(n.func, ast.Name):
            self.err(n, "only whitelisted functions can be called", expected=", ".join(sorted(FUNCTIONS)),
                     found=ast.unparse(n.func)[:40])
        f = n.func.id
        if f in SELECTIONS:
            self.err(n, f"'{f}' must be the whole right side of its own statement",
                     expected=f"Sel[b,h,m,j] = {f}(score, {'k' if f == 'topk' else 'p'})", found=ast.unparse(n)[:60],
                     fix="give the selection a statement of its own and read its 0/1 result")
        if f not in FUNCTIONS:
            self.err(n, f"unknown function '{f}'", expected="one of " + ", ".join(sorted(FUNCTIONS)), found=f,
                     fix=_hint(f, FUNCTIONS) or "write it from the whitelisted functions")
        if n.keywords:
            self.err(n, f"'{f}' takes no keyword arguments", found=", ".join(k.arg or "**" for k in n.keywords))
        op, arity = FUNCTIONS[f]
        if any(isinstance(a, ast.Starred) for a in n.args):
            self.err(n, f"'{f}' called with a starred argument", expected=f"{arity} plain argument(s)",
                     fix=f"write {f}(x)")
        if len(n.args) != arity:
            self.err(n, f"'{f}' takes {arity} argument{'s' * (arity > 1)}", expected=f"{arity}", found=f"{len(n.args)}")
        if self.kind == "param" and op is Op.WHERE:
            self.err(n, "where() is not allowed in params")
        return Expr(op, tuple(self.conv(a, d) for a in n.args))


def parse_spec(text: str, file: str = "<spec>") -> Cascade:
    """Parse spec text (YAML, format v1 or v1.1) into a verified :class:`Cascade`."""
    if not isinstance(text, str):
        raise SpecError("spec must be text", loc=Loc(file), found=type(text).__name__)
    if not text.strip():
        raise SpecError("empty spec", loc=Loc(file), expected="a mapping with keys " + ", ".join(REQUIRED))
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        loc = Loc(file, mark.line + 1, mark.column + 1) if mark else Loc(file)
        raise SpecError("invalid YAML", loc=loc, found=str(getattr(e, "problem", e)),
                        fix="check indentation, colons and quoting") from None
    except (RecursionError, MemoryError, ValueError, TypeError) as e:
        raise SpecError("invalid YAML", loc=Loc(file), found=type(e).__name__) from None
    if root is None:
        raise SpecError("empty spec", loc=Loc(file), expected="a mapping with keys " + ", ".join(REQUIRED))
    top = dict((k, (v, loc)) for k, v, loc in _mapping(root, file, "<spec>"))
    for k in top:
        if k not in TOP_KEYS:
            raise SpecError(f"unknown key '{k}'", loc=top[k][1], expected="one of " + ", ".join(TOP_KEYS),
                            fix=_hint(str(k), TOP_KEYS) or "remove it")
    for k in REQUIRED:
        if k not in top:
            raise SpecError(f"missing required key '{k}'", loc=Loc(file, 1, 1), fix=f"add '{k}:' (see docs/spec.md)")
    version = _scalar(top["einattn"][0], file, "'einattn'")
    if isinstance(version, bool) or version not in VERSIONS:
        raise SpecError("unsupported spec format version", loc=_loc(file, top["einattn"][0]),
                        expected="einattn: 1 or einattn: 1.1", found=repr(version))
    v11 = version == 1.1
    name = _scalar(top["name"][0], file, "'name'")
    if not isinstance(name, str) or not name.strip():
        raise SpecError("'name' must be a non-empty string", loc=_loc(file, top["name"][0]), found=repr(name))
    doc = _scalar(top["doc"][0], file, "'doc'") if "doc" in top else ""
    doc = "" if doc is None else str(doc)

    # inputs -> declared indices
    inputs, tensors, indices = [], {}, {}
    for tname, v, loc in _mapping(top["inputs"][0], file, "inputs"):
        _ident(tname, loc, "input")
        if not isinstance(v, yaml.SequenceNode):
            raise SpecError(f"input '{tname}' needs a list of index names", loc=_loc(file, v),
                            expected=f"{tname}: [b, h, m, d]", found=repr(_scalar(v, file, "input")))
        dims = tuple(_ident(_scalar(x, file, "an index"), _loc(file, x), "index") for x in v.value)
        if len(set(dims)) != len(dims):
            raise SpecError(f"input '{tname}' repeats an index", loc=loc, found=f"[{', '.join(dims)}]",
                            fix="give each dimension its own index name")
        inputs.append(TensorDecl(tname, dims, loc))
        tensors[tname] = dims
        indices.update(dict.fromkeys(dims))
    for t in inputs:
        if t.name in indices:
            raise SpecError(f"input '{t.name}' has the same name as an index", loc=t.loc,
                            fix="tensor and index names must differ")
    if not inputs:
        raise SpecError("'inputs' is empty", loc=top["inputs"][1], expected="at least one input tensor")

    # params
    pnodes = _mapping(top["params"][0], file, "params") if "params" in top and \
        not (isinstance(top["params"][0], yaml.ScalarNode) and top["params"][0].value in ("", "~", "null")) else []
    pnames = {}
    for pname, v, loc in pnodes:
        _ident(pname, loc, "param")
        if pname in tensors or pname in indices:
            raise SpecError(f"param '{pname}' clashes with an input or index of the same name", loc=loc,
                            fix="rename the param")
        pnames[pname] = None
    params = []
    for pname, v, loc in pnodes:
        raw = _scalar(v, file, f"param '{pname}'")
        vloc = _loc(file, v)
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise SpecError(f"param '{pname}' must be a number or an expression", loc=vloc, found=repr(raw))
        if isinstance(raw, (int, float)):
            expr = Expr.const(raw)
        else:
            expr = _ExprParser(file, _locator(v, text, file, raw), "param", pnames, indices, {}).parse(raw)
        params.append(ParamDecl(pname, expr, loc))

    # block indices (v1.1)
    blocks = []
    if "blocks" in top and not (isinstance(top["blocks"][0], yaml.ScalarNode)
                                and top["blocks"][0].value in ("", "~", "null")):
        if not v11:
            raise SpecError("'blocks' needs spec format 1.1", loc=top["blocks"][1], expected="einattn: 1.1",
                            found=f"einattn: {VERSIONS[version]}", fix="write 'einattn: 1.1' at the top")
        for bname, v, loc in _mapping(top["blocks"][0], file, "blocks"):
            _ident(bname, loc, "block index")
            if bname in indices or bname in pnames or bname in tensors:
                raise SpecError(f"block index '{bname}' clashes with an index, param or input of that name",
                                loc=loc, fix="give the block index a name of its own")
            raw = _scalar(v, file, f"block index '{bname}'")
            m = _BLOCK.match(raw) if isinstance(raw, str) else None
            if m is None or m["index"] not in indices or m["size"] not in pnames:
                raise SpecError(f"bad block index '{bname}'", loc=_loc(file, v),
                                expected="'index // param': an input's index and a param, e.g. 'j: n // BS'",
                                found=repr(raw), fix="declare the block size under 'params:'")
            blocks.append(BlockDecl(bname, m["index"], m["size"], loc))
            indices[bname] = None

    # key index
    key = "n"
    if "key_index" in top:
        key = _ident(_scalar(top["key_index"][0], file, "'key_index'"), _loc(file, top["key_index"][0]), "index")

    # cascade
    cnode = top["cascade"][0]
    if not isinstance(cnode, yaml.SequenceNode) or not cnode.value:
        raise SpecError("'cascade' must be a non-empty list of statements", loc=_loc(file, cnode),
                        expected="- S[b,h,m,n] = Q[b,h,m,d] * K[b,h,n,d]")
    stmts = []
    for sn in cnode.value:
        line = _scalar(sn, file, "a statement")
        sloc = _loc(file, sn)
        if not isinstance(line, str):
            raise SpecError("statement must be text", loc=sloc, expected="T[i, j] = expr", found=repr(line))
        m = _STMT.match(line)
        if not m:
            raise SpecError("malformed statement", loc=sloc,
                            expected="'T[i, j] = expr', 'T[i] max= expr' or 'T[i] min= expr'",
                            found=repr(line[:80]))
        lhs = _ident(m["lhs"], sloc, "tensor")
        if lhs in tensors:
            what = "an input" if lhs in {t.name for t in inputs} else "an earlier statement"
            raise SpecError(f"'{lhs}' is assigned twice", loc=sloc, found=f"'{lhs}' is already {what}",
                            fix="give each statement a new tensor name")
        if lhs in pnames or lhs in indices:
            raise SpecError(f"'{lhs}' is already a param or index name", loc=sloc, fix="rename the tensor")
        idx_text = m["idx"] if m["idx"] is not None else ""
        lidx = tuple(x.strip() for x in idx_text.split(",")) if idx_text.strip() else ()
        for x in lidx:
            if x not in indices:
                raise SpecError(f"unknown index '{x}' on the left of '{lhs}'", loc=sloc,
                                expected="an index declared by some input (that is how its size binds)",
                                found=repr(x), fix=_hint(x, indices) or "declare it in an input")
        if len(set(lidx)) != len(lidx):
            raise SpecError(f"left side of '{lhs}' repeats an index", loc=sloc, found=f"[{idx_text}]",
                            fix="left-hand indices must be distinct")
        where = _locator(sn, text, file, line)
        off = m.start("rhs")
        parser = _ExprParser(file, lambda k: where(off + k), "cascade", pnames, indices, tensors)
        sel = parser.parse(m["rhs"], select=True)
        red = Reduce(m["op"])
        if sel is None:
            stmts.append(Stmt(lhs, lidx, red, parser.parse(m["rhs"]), sloc))
        else:
            if not v11:
                raise SpecError(f"'{sel[0]}' needs spec format 1.1", loc=sloc, expected="einattn: 1.1",
                                found=f"einattn: {VERSIONS[version]}", fix="write 'einattn: 1.1' at the top")
            if red is not Reduce.SUM:
                raise SpecError("a selection is written with '='", loc=sloc, found=f"'{m['op']}'",
                                expected=f"{lhs}[...] = {sel[0]}(score, ...)")
            stmts.append(Stmt(lhs, lidx, red, sel[1], sloc, select=(sel[0], sel[2])))
        tensors[lhs] = lidx

    onode = top["outputs"][0]
    if isinstance(onode, yaml.ScalarNode):
        outs = [(_scalar(onode, file, "'outputs'"), _loc(file, onode))]
    elif isinstance(onode, yaml.SequenceNode):
        outs = [(_scalar(x, file, "an output"), _loc(file, x)) for x in onode.value]
    else:
        raise SpecError("'outputs' must be a list of tensor names", loc=_loc(file, onode), expected="[O]")
    defined = [s.name for s in stmts]
    for o, oloc in outs:
        if o not in defined:
            raise SpecError(f"output '{o}' is never defined", loc=oloc,
                            expected="a tensor assigned in 'cascade'", found=repr(o),
                            fix=_hint(str(o), defined) or "add a statement that defines it")
    if not outs:
        raise SpecError("'outputs' is empty", loc=_loc(file, onode), expected="at least one tensor name")
    if len({o for o, _ in outs}) != len(outs):
        raise SpecError("'outputs' repeats a name", loc=_loc(file, onode))
    c = Cascade(tuple(inputs), tuple(params), tuple(stmts), tuple(o for o, _ in outs), key,
                name=name.strip(), doc=doc.strip(), file=file, blocks=tuple(blocks))
    verify(c)
    return c
