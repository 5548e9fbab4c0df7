"""Trace one call of a function: export it, convert the graph, and keep what later calls need to
reuse the result (the size constraints the export recorded, how arguments become kernel inputs and
kernel outputs become the function's return value)."""
from __future__ import annotations

import contextlib
import inspect
import keyword
import logging
import traceback
import warnings
from dataclasses import dataclass

import sympy
import torch

from einattn.ir import FUNCTIONS, Cascade, EinattnError, SpecError, UnsupportedError, parse_spec

from .convert import Converter, size_of, unsupported_at
from .emit import InputPlan, OutputPlan, finish, restore_locs
from .ops import HANDLERS, SUPPORTED
from .values import T, read

aten = torch.ops.aten
KEEP = (aten.logsumexp.default, aten.softplus.default)   # ops the IR has natively: not decomposed
RESERVED = set(FUNCTIONS) | {"inf"} | set(keyword.kwlist)


@dataclass(frozen=True)
class Traced:
    """One traced specialisation of a function."""
    spec: Cascade
    text: str                          # the spec as YAML (valid input to einattn.load_spec)
    inputs: tuple[InputPlan, ...]
    outputs: tuple[OutputPlan, ...]
    single: bool                       # the function returns one tensor, not a tuple
    shapes: tuple                      # per tensor argument, per dim: int (specialised) or sympy expr
    ranges: tuple                      # (symbol, lower, upper) from the export's range constraints
    constants: tuple[torch.Tensor, ...]  # tensors the function closes over (lifted by export)
    sources: tuple                     # per graph input: ("arg", i) a tensor argument, ("const", j)
    dtypes: tuple = ()                 # per output, the dtype the function returns (the reference
                                       # target computes in float64; results come back as eager's)

    def kernel_inputs(self, tensors: list[torch.Tensor], dtype) -> list[torch.Tensor]:
        """The kernel's inputs, in spec order, from the call's tensor arguments."""
        out = []
        for p in self.inputs:
            kind, i = self.sources[p.arg]
            t = tensors[i] if kind == "arg" else self.constants[i].to(tensors[0].device)
            if len(p.keep) != t.dim():
                t = t.reshape([t.shape[j] for j in p.keep])
            if t.dtype != dtype:               # bool, int and other float dtypes: the compute dtype
                t = t.to(dtype)
            out.append(t)
        return out

    def results(self, outs):
        """The function's return value from the kernel's outputs."""
        outs = outs if isinstance(outs, tuple) else (outs,)
        res = []
        for o, plan in zip(outs, self.outputs):
            shape, k = [], 0
            for cnt in plan.counts:
                p = 1
                for s in o.shape[k:k + cnt]:
                    p *= s
                shape.append(p)
                k += cnt
            o = o.reshape(shape) if list(o.shape) != shape else o
            want = self.dtypes[len(res)] if len(res) < len(self.dtypes) else o.dtype
            res.append(o if o.dtype == want else o.to(want))
        return res[0] if self.single else tuple(res)

    def accepts(self, shapes: list[tuple[int, ...]]) -> bool:
        """Whether a call with these tensor shapes satisfies every size the trace assumed. A lower
        bound of 2 is export's own assumption for a dynamic dim (sizes 0 and 1 are specialised
        when seen), not the function's, so it admits 1: a cascade traced at 16 query rows serves 1."""
        if len(shapes) != len(self.shapes) or any(len(a) != len(b) for a, b in zip(shapes, self.shapes)):
            return False
        env = {}
        for want, got in zip(self.shapes, shapes):
            for w, g in zip(want, got):
                if isinstance(w, sympy.Symbol):
                    if env.setdefault(w, g) != g:
                        return False
        for want, got in zip(self.shapes, shapes):
            for w, g in zip(want, got):
                if isinstance(w, int):
                    if w != g:
                        return False
                elif not isinstance(w, sympy.Symbol) and int(w.subs(env)) != g:
                    return False
        for sym, lo, hi in self.ranges:
            v = env.get(sym)
            if v is not None and not (min(lo, 1) <= v <= hi if lo == 2 else lo <= v <= hi):
                return False
        return True


@dataclass(frozen=True)
class CallArgs:
    """A call's arguments split into tensors and the rest (``static``: hashable, part of cache keys)."""
    fn: object
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    static: tuple
    slots: tuple                 # where each tensor goes: (parameter, None | position | key)
    template: tuple              # (args, kwargs) with every tensor replaced by None

    def rebuild(self, tensors) -> tuple[tuple, dict]:
        b = signature(self.fn).bind(*self.template[0], **self.template[1])
        for (pname, sub), t in zip(self.slots, tensors):
            if sub is None:
                b.arguments[pname] = t
            elif isinstance(sub, int):
                v = list(b.arguments[pname])
                v[sub] = t
                b.arguments[pname] = tuple(v)
            else:
                b.arguments[pname] = {**b.arguments[pname], sub: t}
        return b.args, b.kwargs


_SIGNATURES: dict = {}


def signature(fn) -> inspect.Signature:
    """``inspect.signature``, once per function (it costs ~20 us, every call binds with it; not
    functools.lru_cache, which dynamo warns about when it traces a decorated call)."""
    if torch.compiler.is_compiling():   # dynamo: a cache filled while tracing fails its own guards
        return inspect.signature(fn)
    hit = _SIGNATURES.get(id(fn))
    if hit is None or hit[0] is not fn:
        hit = _SIGNATURES[id(fn)] = (fn, inspect.signature(fn))
    return hit[1]


def tensor_args(fn, args, kwargs) -> CallArgs:
    """Split a call of ``fn`` into its tensor arguments (named by parameter) and the rest."""
    sig = signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise SpecError(f"cannot call {fn.__qualname__} with these arguments", found=str(e)) from None
    names, tensors, slots, key = [], [], [], []
    for pname, value in bound.arguments.items():
        kind = sig.parameters[pname].kind
        items = [(f"{pname}{i}", v, (pname, i)) for i, v in enumerate(value)] \
            if kind is inspect.Parameter.VAR_POSITIONAL else \
            [(k, v, (pname, k)) for k, v in value.items()] if kind is inspect.Parameter.VAR_KEYWORD else \
            [(pname, value, (pname, None))]
        for nm, v, slot in items:
            if isinstance(v, torch.Tensor):
                names.append(nm if nm not in RESERVED else nm + "_")
                tensors.append(v)
                slots.append(slot)
            elif v is None or isinstance(v, (bool, int, float, str)):
                key.append((nm, type(v).__name__, v))
            else:
                raise UnsupportedError(f"argument '{nm}' of {fn.__qualname__} is a {type(v).__name__}: "
                                       f"decorated functions take tensors and numbers (bool, int, float, str); "
                                       f"pass the tensors inside it as arguments of their own")
    tpl_args = tuple(None if isinstance(a, torch.Tensor) else
                     tuple(None if isinstance(x, torch.Tensor) else x for x in a) if isinstance(a, tuple) else a
                     for a in args)
    tpl_kwargs = {k: None if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return CallArgs(fn, tuple(names), tuple(tensors), tuple(key), tuple(slots), (tpl_args, tpl_kwargs))


class _Call(torch.nn.Module):
    def __init__(self, fn, rebuild):
        super().__init__()
        self.fn, self.rebuild = fn, rebuild

    def forward(self, *ts):
        a, kw = self.rebuild(ts)
        return self.fn(*a, **kw)


def _user_frame(fn, exc: BaseException) -> str:
    file = getattr(getattr(fn, "__code__", None), "co_filename", None)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: `{(f.line or '').strip()}`: "


def export(fn, tensors, rebuild, names=()):
    from torch.export import Dim
    anchor = getattr(torch.fx.proxy, "_register_stack_trace_anchor", None)
    if anchor is not None:        # keep the user's frames in node stack traces (source lines in errors)
        anchor(fn)
    dyn = (tuple({i: Dim.AUTO for i in range(t.dim())} for t in tensors),)
    from torch.utils._python_dispatch import _disable_current_modes
    try:
        # a first call may come inside a dispatch mode (opcheck's schema check, a profiler): the
        # trace is of the function, not of that mode
        with _quiet(), _disable_current_modes():
            ep = torch.export.export(_Call(fn, rebuild), tuple(tensors), dynamic_shapes=dyn, strict=False)
    except Exception as e:            # noqa: BLE001 -- every export failure becomes one clear error
        place = _user_frame(fn, e)
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "data-dependent" in str(e) or "GuardOnDataDependent" in type(e).__name__:
            what = "Python control flow or a size that depends on tensor values"
            fix = "Use torch.where instead of if/else on tensor values, and keep sizes independent of values"
        else:
            what = f"torch.export cannot trace the function ({type(e).__name__}: {text[:200]})"
            fix = "Write the function with the supported torch ops: " + SUPPORTED
        raise UnsupportedError(f"{place}{what}. {fix}") from e
    _check_no_input_writes(fn, ep, names)
    tbl = torch.export.default_decompositions()
    for op in KEEP:
        tbl.pop(op, None)
    with _quiet(), _disable_current_modes():
        return ep.run_decompositions(tbl)


def _check_no_input_writes(fn, ep, names=()) -> None:
    """Refuse in-place writes into an argument (``q.mul_(2)``, ``k[..., 0] = 0``): the export graph
    still holds them before functionalisation; writes into intermediates are fine."""
    file = getattr(getattr(fn, "__code__", None), "co_filename", None)
    user = [n for n, s in zip((n for n in ep.graph.nodes if n.op == "placeholder"), ep.graph_signature.input_specs)
            if s.kind.name == "USER_INPUT"]
    views = {n: (names[i] if i < len(names) else n.name) for i, n in enumerate(user)}
    for n in ep.graph.nodes:
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            continue
        schema = n.target._schema
        first = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
        if schema.is_mutable and first is not None and first in views:
            raise unsupported_at(n, file, f"an in-place write into the argument '{views[first]}' "
                                 f"({n.target.__name__})", "einattn computes outputs from inputs without "
                                 "changing them: write x = x * 2 instead of x.mul_(2), or clone first")
        if first is not None and first in views and _is_view(n):
            views[n] = views[first]


def _is_view(n) -> bool:
    s = n.target._schema
    return bool(s.returns) and s.returns[0].alias_info is not None and not s.returns[0].alias_info.is_write


@contextlib.contextmanager
def _quiet():
    """Export's notes that are about its own machinery, not the user's function (the 0/1
    specialisation of size-1 dims is handled by ``trace``; a pytree deprecation; fake-tensor
    tracebacks of errors export then raises)."""
    # non_strict_utils: the 0/1 notes; fake_tensor: a traceback logged before export raises the
    # error that becomes our UnsupportedError
    logs = [(logging.getLogger(n), lvl) for n, lvl in (("torch._export.non_strict_utils", logging.ERROR),
                                                        ("torch._subclasses.fake_tensor", logging.CRITICAL))]
    levels = [log.level for log, _ in logs]
    for log, lvl in logs:
        log.setLevel(lvl)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        for (log, _), level in zip(logs, levels):
            log.setLevel(level)


def trace(fn, args, kwargs) -> Traced:
    """Trace ``fn(*args, **kwargs)`` into a cascade (see docs/decorator.md).

    Export specialises every size-1 dim, so a call with one query row (or one KV head, or batch 1)
    is first traced with those dims widened to 2: when that trace admits the call's sizes, its
    cascade (general in those dims) is kept; otherwise (a size-1 dim that broadcasts, such as
    slopes shaped [h, 1, 1]) the call is traced as it is, with those dims dropped."""
    call = tensor_args(fn, args, kwargs)
    shapes = [tuple(t.shape) for t in call.tensors]
    empty = [n for n, s in zip(call.names, shapes) if 0 in s]
    if empty:
        raise UnsupportedError(f"argument '{empty[0]}' of {fn.__qualname__} has a dimension of size 0: a "
                               f"trace reads how the function combines dims from its first call's sizes; "
                               f"call it first with sizes >= 1 (later calls may have empty dims)")
    if any(1 in s for s in shapes):
        wide = [torch.zeros([2 if x == 1 else x for x in t.shape], dtype=t.dtype, device=t.device)
                for t in call.tensors]
        try:
            tr = _trace(fn, call, wide)
            if tr.accepts(shapes):
                return tr
        except EinattnError:
            pass
    return _trace(fn, call, list(call.tensors))


def _trace(fn, call, tensors) -> Traced:
    names = list(call.names)
    ep = export(fn, tensors, call.rebuild, names)
    source = getattr(getattr(fn, "__code__", None), "co_filename", None)
    c = Converter(ep.graph_module, names, source)
    specs = ep.graph_signature.input_specs
    user = iter(names)
    consts, arg_names, sources, user_vals = [], [], [], []
    for node in ep.graph.nodes:
        c.node = node
        if node.op == "placeholder":
            spec = next(s for s in specs if s.arg.name == node.name)
            if spec.kind.name == "USER_INPUT":
                nm = next(user)
                sources.append(("arg", len(user_vals)))
                user_vals.append(node.meta["val"])
            else:
                sources.append(("const", len(consts)))
                nm = f"const{len(consts)}"
                t = ep.constants.get(spec.target) if spec.target in ep.constants else ep.state_dict[spec.target]
                consts.append(t)
            arg_names.append(nm)
            val = node.meta["val"]
            if spec.kind.name != "USER_INPUT" and consts[-1].numel() == 1:
                from einattn.ir import Expr       # a constant the function made (torch.tensor(2.0)): a number
                c.env[node] = T(Expr.const(float(consts[-1].reshape(()).item())), ())
            elif val.numel() == 1 and all(isinstance(x, int) for x in val.shape):
                raise UnsupportedError(
                    f"argument '{nm}' of {fn.__qualname__} is a one-element tensor: the cascade IR reads "
                    f"tensors along indices. Pass it as a Python float (each value compiles once), or give "
                    f"it a dim the function indexes (a per-head tensor [h])")
            else:
                c.env[node] = _placeholder(c, nm, val)
        elif node.op == "call_function":
            h = HANDLERS.get(node.target)
            if h is None:
                raise c.unsupported(f"torch op {node.target} is not supported", "Supported: " + SUPPORTED)
            a = torch.fx.node.map_arg(node.args, lambda n: c.env[n])
            kw = torch.fx.node.map_arg(node.kwargs, lambda n: c.env[n])
            c.env[node] = h(c, node, *a, **kw)
        elif node.op == "output":
            res = node.args[0]
            single = not isinstance(res, (tuple, list)) or len(res) == 1 and not _returns_tuple(ep)
            out_nodes = list(res if isinstance(res, (tuple, list)) else [res])
            outs = [c.env[n] for n in out_nodes]
        else:
            raise c.unsupported(f"graph node kind {node.op}", "Write the function with torch ops only")
    file = source or "<function>"
    casc, ins, ops = finish(c, outs, arg_names, file, out_nodes)
    from einattn.specs import dump_spec
    loc = _def_line(fn)
    casc = Cascade(casc.inputs, casc.params, casc.stmts, casc.outputs, casc.key, name=fn.__name__,
                   doc=f"Traced from {fn.__qualname__} ({loc}) by einattn.", file=loc)
    comments = {s.name: f"{_short(s.loc.file)}:{s.loc.line}" for s in casc.stmts if s.loc is not None}
    text = dump_spec(casc, comments)
    spec = restore_locs(parse_spec(text, f"<traced {fn.__qualname__}>"), {s.name: s.loc for s in casc.stmts})
    shapes = tuple(tuple(_dim(s) for s in val.shape) for val in user_vals)
    ranges = tuple((sym, _bound(r.lower, 0), _bound(r.upper, 2 ** 62))
                   for sym, r in ep.range_constraints.items() if isinstance(sym, sympy.Symbol))
    dtypes = tuple(n.meta["val"].dtype for n in out_nodes)
    return Traced(spec, text, ins, ops, single, shapes, ranges, tuple(consts), tuple(sources), dtypes)


def _returns_tuple(ep) -> bool:
    return ep.call_spec.out_spec is not None and ep.call_spec.out_spec.type in (tuple, list)


def _bound(v, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return default


def _dim(s):
    return int(s) if isinstance(s, int) else size_of(s)[0]


def _short(f: str) -> str:
    return f.rsplit("/", 1)[-1]


def _def_line(fn) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code is not None else fn.__qualname__


def _placeholder(c: Converter, nm: str, val) -> T:
    dims = []
    for s in val.shape:
        size, hint = size_of(s)
        a = c.A.new(size, hint, repeat=hint == 1)
        if hint == 1:                 # specialised to 1 by export: a broadcast dim, dropped at the call
            c.A.dropped.add(a)
        if isinstance(size, sympy.Symbol):
            c.symbols.setdefault(size, a)
        dims.append((a,))
    c.input_dims[nm] = tuple(g[0] for g in dims)
    e = read(nm, [g[0] for g in dims])
    if val.dtype is torch.bool:       # passed as 0/1 in the compute dtype (Traced.kernel_inputs)
        from einattn.ir import Expr, Op
        return T(Expr(Op.NE, (e, Expr.const(0.0))), tuple(dims), True)
    return T(e, tuple(dims))
