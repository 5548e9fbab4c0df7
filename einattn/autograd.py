"""Autograd for compiled kernels: the derived backward, run as kernels of the same target.

A ``Kernel`` called on tensors that require grad (target other than ``reference``, which
differentiates its float64 torch evaluation directly) runs ``_AttentionFn``:

- forward: the *training forward*, the same cascade compiled with the saved values as
  extra outputs (softmax: ``O`` and the per-row ``M`` and ``L``; O(rows) memory);
- backward: the stages of ``compiler/backward_plan``: the dq kernel (streams the keys),
  the dkv kernel (streams the queries), then the per-row sums in torch. Every stage
  kernel is compiled for the forward's target with ``einattn.compile``.

One ``Training`` per (kernel, inputs that require grad), built on first use.
"""
from __future__ import annotations

import threading

import torch

from einattn.compiler.autodiff import derive
from einattn.compiler.backward_plan import plan_backward
from einattn.ir import bind_sizes, eval_params


class Training:
    """The training forward and the backward stages of one kernel for one set of inputs."""

    def __init__(self, kernel, wrt: tuple[str, ...]):
        from .kernel import compile
        self.kernel, self.wrt = kernel, wrt
        self.backward = derive(kernel.spec, wrt)
        self.plan = plan_backward(self.backward)
        opts = dict(target=str(kernel.target), interpret=kernel.interpret or None, tune=kernel.tune)
        self.forward = compile(self.backward.training_forward(), config=kernel.config, **opts, **kernel.params)
        self.stages = []
        for st in self.plan.stages:
            if st.kind == "kernel":
                names = {p.name for p in st.cascade.params}
                prm = {k: v for k, v in kernel.params.items() if k in names}
                self.stages.append((st, compile(st.cascade, **opts, **prm)))
            else:
                self.stages.append((st, None))

    def run_forward(self, inputs: dict) -> tuple[tuple, dict]:
        """(the forward outputs, the saved values by name)."""
        outs = self.forward(**inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        named = dict(zip(self.forward.spec.outputs, outs))
        c = self.kernel.spec
        return tuple(named[o] for o in c.outputs), {s: named[s] for s in self.backward.saved}

    def run_backward(self, inputs: dict, saved: dict, grads: tuple) -> dict:
        """Gradient per name in ``wrt`` (zeros where no output depends on it)."""
        bw = self.backward
        dtype = next(iter(inputs.values())).dtype
        values = dict(inputs)
        values.update(saved)
        for o, g in zip(bw.forward.outputs, grads):
            if o in bw.incoming:
                values[bw.incoming[o]] = g.to(saved.get(o, g).dtype).contiguous()
        for st, k in self.stages:
            c = st.cascade
            ins = {t.name: values[t.name] for t in c.inputs}
            if k is not None:
                outs = k(**ins)
                outs = outs if isinstance(outs, tuple) else (outs,)
            else:
                res = self._run_torch(st, ins, torch.float64 if dtype == torch.float64 else torch.float32)
                outs = tuple(res[o] for o in c.outputs)
            values.update(zip(c.outputs, outs))
        out = {}
        for x in self.wrt:
            t = inputs[x]
            parts = [values[g] for g in bw.grads.get(x, ())]
            out[x] = sum(parts[1:], parts[0]).to(t.dtype) if parts else torch.zeros_like(t)
        return out

    def _run_torch(self, st, ins: dict, compute: torch.dtype) -> dict:
        """A rows or tiles stage, with torch in the compute dtype."""
        from einattn.backends.torch.blocks import run_blocks
        from einattn.backends.torch.reference import run_reference
        c = st.cascade
        sizes = bind_sizes(c, {n: tuple(t.shape) for n, t in ins.items()})
        names = {q.name for q in c.params}
        params = eval_params(c, sizes, {p: v for p, v in self.kernel.params.items() if p in names})
        if st.kind == "tiles":
            return run_blocks(c, ins, sizes, params, self.plan.query, compute)
        return run_reference(c, ins, sizes, params, compute)


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, training: Training, names: tuple, *tensors):
        inputs = dict(zip(names, tensors))
        outs, saved = training.run_forward(inputs)
        ctx.training, ctx.names, ctx.saved_names = training, names, tuple(saved)
        ctx.save_for_backward(*tensors, *saved.values())
        return outs

    @staticmethod
    def backward(ctx, *grads):
        k = len(ctx.names)
        ts = ctx.saved_tensors
        inputs = dict(zip(ctx.names, ts[:k]))
        saved = dict(zip(ctx.saved_names, ts[k:]))
        got = ctx.training.run_backward(inputs, saved, grads)
        return (None, None, *(got.get(n) if ctx.needs_input_grad[2 + j] else None
                              for j, n in enumerate(ctx.names)))


_LOCK = threading.Lock()


def training_call(kernel, inputs: dict):
    """The kernel's outputs on ``inputs`` with a grad_fn running the derived backward."""
    wrt = tuple(n for n, t in inputs.items() if t.requires_grad)
    cache = kernel.__dict__.setdefault("_training", {})
    tr = cache.get(wrt)
    if tr is None:
        with _LOCK:
            tr = cache.get(wrt) or cache.setdefault(wrt, Training(kernel, wrt))
    names = tuple(inputs)
    outs = _AttentionFn.apply(tr, names, *inputs.values())
    return outs[0] if len(outs) == 1 else tuple(outs)


def reference_gradients(spec, inputs: dict, grads: tuple, wrt=None, params: dict | None = None) -> dict:
    """The derived backward of ``spec`` run by the float64 reference executor, without kernels:
    the gradient of each input in ``wrt`` (default: all) for the outputs' gradients ``grads``.
    ``einattn check --backward --target reference`` compares it with torch.autograd."""
    from einattn.backends.torch.reference import run_reference

    def run(c, x: dict) -> dict:
        x = {k: v.detach().double() for k, v in x.items()}
        sizes = bind_sizes(c, {k: tuple(v.shape) for k, v in x.items()})
        return run_reference(c, x, sizes, eval_params(c, sizes, {k: v for k, v in (params or {}).items()
                                                                  if any(p.name == k for p in c.params)}))
    bw = derive(spec, None if wrt is None else tuple(wrt))
    fw = run(bw.training_forward(), inputs)
    ins = dict(inputs)
    ins.update({s: fw[s] for s in bw.saved})
    ins.update({bw.incoming[o]: g for o, g in zip(spec.outputs, grads) if o in bw.incoming})
    res = run(bw.cascade, ins) if bw.cascade.outputs else {}
    return {x: sum(res[g] for g in bw.grads[x]) if x in bw.grads else torch.zeros_like(inputs[x], dtype=torch.float64)
            for x in bw.wrt}
