"""``@einattn.attention``: compile attention written in plain PyTorch.

The first call with a new dtype, set of non-tensor arguments and set of sizes the trace had to fix
traces the function (``einattn.trace``: torch.export with dynamic dims, core ATen, converted into
a cascade), plans and compiles it; later calls whose sizes satisfy what the trace assumed reuse
the kernel (other sequence lengths, batch sizes, head counts and head dims where the function
did not fix them). Calls go through one ``torch.library`` custom op, ``einattn::attention``,
whose fake implementation runs the original function on fake tensors, so a model calling a
decorated function compiles under ``torch.compile(fullgraph=True)`` without a graph break.
"""
from __future__ import annotations

import functools
import threading
import warnings

import torch

from einattn.ir import EinattnError, UnsupportedError

from .trace.program import CallArgs, Traced, tensor_args, trace

_REGISTRY: dict[int, "Attention"] = {}
_LOCK = threading.RLock()
FALLBACKS = (None, "eager")


class Attention:
    """A decorated attention function (see :func:`attention`)."""

    def __init__(self, fn, target: str = "cpu", tune: str = "none", fallback: str | None = None,
                 config: dict | None = None, interpret: bool | None = None):
        if fallback not in FALLBACKS:
            raise UnsupportedError(f"fallback={fallback!r}: expected None (raise when the function cannot be "
                                   f"compiled) or 'eager' (run it as written, with one warning)")
        functools.update_wrapper(self, fn)
        self.fn, self.target, self.tune, self.fallback = fn, target, tune, fallback
        self.config, self.interpret = dict(config or {}), interpret
        self._entries: dict = {}      # (static args, dtype, ranks) -> [(Traced, Kernel)]
        self._kernels: dict = {}      # spec structural hash -> Kernel
        self._hits: dict = {}         # (key, shapes) -> entry: sizes seen before skip the size check
        self._last: Traced | None = None
        self._eager_reason: str | None = None
        self._id = id(self)
        _REGISTRY[self._id] = self

    def __repr__(self) -> str:
        return f"einattn.attention({self.fn.__qualname__}, target={self.target!r})"

    def __reduce__(self):
        """A decorated module-level function pickles by name (the module holds this object, not
        the plain function); one wrapped at run time pickles its function and options."""
        import sys
        owner = sys.modules.get(self.__module__)
        if owner is not None and _lookup(owner, self.__qualname__) is self:
            return self.__qualname__
        return _rebuild, (self.fn, self.target, self.tune, self.fallback, self.config, self.interpret)

    # -- calling ---------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        call = tensor_args(self.fn, args, kwargs)
        if not call.tensors:
            raise UnsupportedError(f"{self.fn.__qualname__} was called without tensor arguments")
        cid = _static_key(call, self._id)
        if torch.is_grad_enabled() and any(t.requires_grad for t in call.tensors) \
                and not torch.compiler.is_compiling():
            # eager training: the kernel's own autograd (the derived backward, saved row values);
            # the op's autograd formula (below) recomputes the forward, for torch.compile graphs
            outs = self.run_call(call, call.tensors, cid)
        else:
            outs = attention_op(list(call.tensors), self._id, cid)
        return outs[0] if _SINGLE.get((self._id, cid), True) else tuple(outs)

    def run(self, args, kwargs) -> list[torch.Tensor]:
        """Compute the function on real tensors with its compiled kernel (tracing on a miss)."""
        call = tensor_args(self.fn, args, kwargs)
        return self.run_call(call, call.tensors, _static_key(call, self._id))

    def run_call(self, call, tensors, cid: int | None = None) -> list[torch.Tensor]:
        """``run`` for a call already split (``call``: its non-tensor arguments) with these tensors;
        ``cid``: the call's id, under which whether it returns one tensor is recorded."""
        if self._eager_reason is not None:
            return self._eager(call, tensors, cid)
        dtype = _compute_dtype(tensors)
        key = (call.static, dtype, tuple(t.dim() for t in tensors))
        shapes = tuple(tuple(t.shape) for t in tensors)
        entry = self._hits.get((key, shapes)) or self._find(key, shapes)
        if entry is None:
            with _LOCK:
                entry = self._find(key, shapes)
                if entry is None:
                    a, kw = call.rebuild(tensors)
                    try:
                        entry = self._compile(a, kw, key)
                    except EinattnError as e:
                        if self.fallback != "eager":
                            raise
                        self._eager_reason = str(e)
                        warnings.warn(f"einattn: {self.fn.__qualname__} runs eagerly (fallback='eager'): {e}",
                                      stacklevel=3)
                        return self._eager(call, tensors, cid)
        if len(self._hits) >= 256:
            self._hits.clear()
        self._hits[(key, shapes)] = entry
        tr, kernel = entry
        _SINGLE[(self._id, cid)] = tr.single
        return _as_list(tr.results(kernel(*tr.kernel_inputs(tensors, dtype))))

    def _find(self, key, shapes):
        return next(((tr, k) for tr, k in self._entries.get(key, ()) if tr.accepts(shapes)), None)

    def _eager(self, call, tensors, cid) -> list[torch.Tensor]:
        a, kw = call.rebuild(tensors)
        res = self.fn(*a, **kw)
        _SINGLE[(self._id, cid)] = not isinstance(res, (tuple, list))
        return _as_list(res)

    def _compile(self, args, kwargs, key):
        from .kernel import compile as compile_spec
        tr = self.trace(*args, **kwargs)
        h = tr.spec.structural_hash()
        kernel = self._kernels.get(h)
        if kernel is None:
            kernel = self._kernels[h] = compile_spec(tr.spec, target=self.target, tune=self.tune,
                                                     config=self.config, interpret=self.interpret)
        self._entries.setdefault(key, []).append((tr, kernel))
        return tr, kernel

    # -- looking at it ---------------------------------------------------------------------
    def trace(self, *args, **kwargs) -> Traced:
        """Trace a call (without running it) and return the derived cascade and adapters."""
        tr = _in_fresh_thread(trace, self.fn, args, kwargs)
        self._last = tr
        return tr

    def spec(self, *args, **kwargs) -> str:
        """The derived spec as YAML text (valid input to ``einattn.load_spec``): of these example
        arguments, or of the last traced call when none are given."""
        if args or kwargs:
            return self.trace(*args, **kwargs).text
        if self._last is None:
            raise UnsupportedError(f"{self.fn.__qualname__} has not been called yet: call it once, or pass "
                                   f"example arguments, fn.spec(q, k, v)")
        return self._last.text

    def cascade(self, *args, **kwargs):
        if args or kwargs:
            return self.trace(*args, **kwargs).spec
        self.spec()
        return self._last.spec

    __einattn_cascade__ = cascade      # einattn.explain(fn), einattn.compile(fn, ...)

    def op_inputs(self, *args, **kwargs) -> tuple[list[torch.Tensor], int, int]:
        """The arguments of ``torch.ops.einattn.attention`` for this call (for ``torch.library.opcheck``)."""
        call = tensor_args(self.fn, args, kwargs)
        return list(call.tensors), self._id, _static_key(call, self._id)

    def kernels(self) -> list:
        """The kernels compiled so far (one per distinct derived cascade)."""
        return list(self._kernels.values())


def attention(fn=None, *, target: str = "cpu", tune: str = "none", fallback: str | None = None,
              config: dict | None = None, interpret: bool | None = None):
    """Compile an attention function written in plain PyTorch.

    Args:
        target: as ``einattn.compile``: ``cpu``, ``reference``, ``streaming``, ``cuda[:sm_XX]``, ``rocm[:gfx]``.
        tune: ``none``, ``quick`` or ``full`` (tuned configs from the tuning database, per shape bucket).
        fallback: ``None`` raises ``UnsupportedError`` (naming the op and your source line) when the
            function cannot be compiled; ``"eager"`` runs it as written instead, with one warning.
        config, interpret: as ``einattn.compile``.

    >>> import torch, einattn
    >>> @einattn.attention(target="reference")
    ... def attn(q, k, v):
    ...     return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v
    >>> q = torch.randn(1, 2, 5, 8); kv = torch.randn(1, 2, 7, 8)
    >>> attn(q, kv, kv).shape
    torch.Size([1, 2, 5, 8])
    >>> einattn.explain(attn).passes
    1
    """
    def wrap(f):
        return Attention(f, target, tune, fallback, config, interpret)
    return wrap if fn is None else wrap(fn)


_SINGLE: dict = {}


def _rebuild(fn, target, tune, fallback, config, interpret):
    return Attention(fn, target, tune, fallback, config, interpret)


def _in_fresh_thread(fn, *args):
    """``fn(*args)`` on a new thread: torch.export then sees none of the caller's thread-local
    tracing state (a first call from inside a torch.compile'd graph's runtime or from opcheck
    otherwise makes export find fake tensors among its constants)."""
    box: dict = {}

    def work():
        try:
            box["value"] = fn(*args)
        except BaseException as e:      # noqa: BLE001 -- re-raised on the caller's thread
            box["error"] = e
    t = threading.Thread(target=work, name="einattn-trace")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _lookup(obj, qualname: str):
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _as_list(x) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _compute_dtype(tensors) -> torch.dtype:
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


_STATIC: dict = {}


def _static_key(call, fn_id: int) -> int:
    """An int naming this call's non-tensor arguments (the custom op takes tensors and ints)."""
    return _register_call(fn_id, call.names, call.static, call.slots, call.template[0],
                          tuple(call.template[1].items()))


@torch.compiler.assume_constant_result
def _register_call(fn_id: int, names: tuple, static: tuple, slots: tuple, args: tuple, kwargs: tuple) -> int:
    key = (fn_id, static, slots, names)
    with _LOCK:
        k = _STATIC.get(key)
        if k is None:
            k = _STATIC[key] = len(_STATIC)
            _CALLS[k] = CallArgs(_REGISTRY[fn_id].fn, names, (), static, slots, (args, dict(kwargs)))
    return k


_CALLS: dict = {}


@torch.library.custom_op("einattn::attention", mutates_args=())
def attention_op(tensors: list[torch.Tensor], fn_id: int, call_id: int) -> list[torch.Tensor]:
    """The compiled kernel of a decorated function, as one torch op."""
    att = _REGISTRY[fn_id]
    outs = att.run_call(_CALLS[call_id], tensors, call_id)
    return [o if not _aliases(o, tensors) else o.clone() for o in outs]


@attention_op.register_fake
def _(tensors, fn_id, call_id):
    args, kwargs = _CALLS[call_id].rebuild(tensors)
    res = _REGISTRY[fn_id].fn(*args, **kwargs)
    _SINGLE[(fn_id, call_id)] = not isinstance(res, (tuple, list))
    return [o.clone() if _aliases(o, tensors) else o for o in _as_list(res)]


def _aliases(o, tensors) -> bool:
    return any(o.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in tensors) \
        if o.device.type != "meta" and not isinstance(o, torch._subclasses.FakeTensor) else False


@torch.library.custom_op("einattn::attention_backward", mutates_args=())
def attention_backward_op(tensors: list[torch.Tensor], grads: list[torch.Tensor], fn_id: int,
                          call_id: int) -> list[torch.Tensor]:
    """Gradients of a decorated function's outputs (``grads``) with respect to its floating-point
    tensors: the forward again (training kernel, saving its row values), then the derived backward."""
    att = _REGISTRY[fn_id]
    xs = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
    with torch.enable_grad():
        outs = att.run_call(_CALLS[call_id], xs, call_id)
    want = [x for x in xs if x.requires_grad]
    got = iter(torch.autograd.grad(outs, want, grads, allow_unused=True))
    out = []
    for x in xs:
        g = next(got) if x.requires_grad else None
        out.append(torch.zeros_like(x) if g is None else g)
    return out


@attention_backward_op.register_fake
def _(tensors, grads, fn_id, call_id):
    return [torch.empty_like(t) for t in tensors]


def _setup_context(ctx, inputs, output):
    tensors, fn_id, call_id = inputs
    ctx.fn_id, ctx.call_id, ctx.n = fn_id, call_id, len(tensors)
    ctx.save_for_backward(*tensors, *output)


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    tensors, outs = list(saved[:ctx.n]), saved[ctx.n:]
    grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, outs)]
    got = attention_backward_op(tensors, grads, ctx.fn_id, ctx.call_id)
    return [g if t.is_floating_point() else None for g, t in zip(got, tensors)], None, None


attention_op.register_autograd(_backward, setup_context=_setup_context)
