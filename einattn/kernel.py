"""``einattn.compile`` and the callable ``Kernel`` it returns."""
from __future__ import annotations

import threading

import torch

from einattn.backends import get_backend, parse_target
from einattn.backends.base import all_finite
from einattn.compiler import Plan, make_plan
from einattn.compiler.normalize import finite_only_inputs
from einattn.ir import Loc, Op, SpecError, TuningError, UnsupportedError, bind_sizes, eval_params

from einattn.ir import settings
from .specs import Spec, load_spec


class Kernel:
    """A compiled attention variant. Call it with torch tensors, positionally in the
    spec's ``inputs:`` order or by name; it returns the output tensor, or a tuple in
    ``outputs:`` order when there are several."""

    def __init__(self, spec: Spec, plan: Plan, target, backend, artifact, params: dict, config: dict,
                 *, interpret: bool = False, tune: str = "none"):
        self.spec, self.plan, self.target, self.config = spec, plan, target, dict(config)
        self.params = dict(params)
        self.interpret, self.tune = bool(interpret), tune
        self._backend, self._artifact = backend, artifact
        self._grouped = _grouped_reads(spec)
        self._tuned: dict = {}
        self._kp = None         # (shape bucket, dtype) -> artifact of the tuned config (tune != "none")
        # inputs the plan moved out of a where(c, V, 0): exact only while finite (reference: exact)
        self._finite_only = finite_only_inputs(plan) if target.kind != "reference" else {}

    def __repr__(self) -> str:
        return f"Kernel({self.spec.name!r}, target='{self.target}', passes={self.plan.passes})"

    def __reduce__(self):
        """Pickle what the kernel was compiled from, not the build: a built library cannot cross
        processes, and ``compile`` in the receiving process finds it in its disk cache or rebuilds it."""
        return _recompile, (self.spec, str(self.target), self.params, self.config, self.interpret, self.tune)

    def __copy__(self) -> "Kernel":
        """A new Kernel sharing the backend and the built artifact (immutable once built)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.params, new.config = dict(self.params), dict(self.config)
        return new

    def __deepcopy__(self, memo) -> "Kernel":
        return self.__copy__()

    def bind(self, args, kwargs) -> dict[str, torch.Tensor]:
        c = self.spec
        names = [t.name for t in c.inputs]
        if len(args) > len(names):
            raise SpecError(f"{c.name} takes {len(names)} inputs", loc=Loc(c.file),
                            expected=", ".join(names), found=f"{len(args)} positional arguments")
        got = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise SpecError(f"unknown input '{k}'", loc=Loc(c.file), expected=", ".join(names))
            if k in got:
                raise SpecError(f"input '{k}' given twice", loc=Loc(c.file))
            got[k] = v
        for n in names:
            if n not in got:
                raise SpecError(f"missing input '{n}'", loc=Loc(c.file), expected=", ".join(names))
            t = got[n]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise SpecError(f"input '{n}' must be a floating-point torch.Tensor", loc=Loc(c.file),
                                found=type(t).__name__ if not isinstance(t, torch.Tensor) else str(t.dtype))
        return {n: got[n] for n in names}

    def __call__(self, *args, **kwargs):
        inputs = self.bind(args, kwargs)
        self._check_call(inputs)
        c = self.spec
        sizes = bind_sizes(c, {n: tuple(t.shape) for n, t in inputs.items()})
        params = eval_params(c, sizes, self.params)
        _check_grouped_reads(self._grouped, sizes, params)
        _check_finite_only(self._finite_only, inputs, self.target)
        if self.target.kind not in GRAD_TARGETS and torch.is_grad_enabled() and \
                any(t.requires_grad for t in inputs.values()):
            from .autograd import training_call
            return training_call(self, inputs)
        artifact = self._artifact if self.tune == "none" else self._tuned_artifact(inputs, sizes, params)
        outs = self._backend.launch(artifact, inputs, sizes, params)
        res = tuple(outs[o] for o in c.outputs)
        return res[0] if len(res) == 1 else res

    def scan(self, *args, state=None, **kwargs):
        """``(outputs, final state)`` of a linear cascade run as a chunked scan (``docs/linear.md``):
        ``state`` is the state before the first position (None: zeros), from an earlier call's
        final state; the chunked algorithm runs whatever the cost model would pick.

        >>> import torch
        >>> k = compile("retention", target="cpu")
        >>> q = torch.randn(1, 2, 40, 16)
        >>> o1, s = k.scan(q[:, :, :24], q[:, :, :24], q[:, :, :24])
        >>> o2, _ = k.scan(q[:, :, 24:], q[:, :, 24:], q[:, :, 24:], state=s)
        >>> o = k(q, q, q); bool((torch.cat([o1, o2], 2) - o).abs().max() < 1e-4)
        True
        """
        from einattn.backends.linear import LinearBackend
        if not isinstance(self._backend, LinearBackend):
            raise UnsupportedError(f"{self.spec.name} on '{self.target}' runs no scan: a state in and out exists "
                                   f"for linear cascades on kernel targets (einattn.explain says whether a "
                                   f"cascade is linear)")
        inputs = self.bind(args, kwargs)
        self._check_call(inputs)
        sizes = bind_sizes(self.spec, {n: tuple(t.shape) for n, t in inputs.items()})
        params = eval_params(self.spec, sizes, self.params)
        art = self._artifact
        ch = art.choice(sizes, 1)
        ch = type(ch)("chunked", ch.chunk, ch.schedule, "Kernel.scan")
        return self._backend.run_scan(art, ch, inputs, sizes, params, state)

    def _tuned_artifact(self, inputs: dict, sizes: dict, params: dict):
        """The artifact of the tuned config of this call's shape bucket: looked up in the tuning
        database (then the shipped records) on the first call with a new bucket; tuned at
        ``self.tune`` effort when no record exists (``autotune.tuner.lookup_or_tune``)."""
        from einattn.autotune.key import shape_bucket
        from einattn.backends.base import Workload
        from einattn.compiler import make_kernel_plan
        dtype = next(iter(inputs.values())).dtype if inputs else torch.float32
        work = Workload.of(sizes, dtype)
        if self._kp is None:
            self._kp = make_kernel_plan(self.plan)
        bucket = (tuple(shape_bucket(self._kp, work, params).items()), work.dtype)
        hit = self._tuned.get(bucket)
        if hit is None:
            with _TUNE_LOCK:                 # two threads meeting a new bucket tune it once
                hit = self._tuned.get(bucket) or self._tune_bucket(bucket, work)
        return hit[1]

    def _tune_bucket(self, bucket, work) -> tuple:
        from einattn.autotune.measure import Task
        from einattn.autotune.tuner import lookup_or_tune
        task = Task(self.spec, str(self.target), work, tuple(sorted(self.params.items())), self.interpret)
        rec = lookup_or_tune(task, self.tune, pinned=self.config)
        options = {"interpret": True} if self.interpret else {}
        hit = self._tuned[bucket] = (dict(rec.winner),
                                     self._backend.prepare(self.plan, self.target, dict(rec.winner), **options))
        return hit

    def tuned_configs(self) -> dict:
        """Shape bucket -> the config this kernel runs it with (``tune`` != "none")."""
        return {b: cfg for b, (cfg, _) in self._tuned.items()}

    def _check_call(self, inputs: dict) -> None:
        """Refuse, at the call, what the target would otherwise get wrong later."""
        meta = [n for n, t in inputs.items() if t.device.type == "meta"]
        if meta:
            raise UnsupportedError(f"input '{meta[0]}' is on the meta device; einattn kernels compute values "
                                   f"(target '{self.target}'): pass real tensors (the output shapes are the "
                                   f"spec's outputs over the input sizes, see einattn.explain)")


def _check_finite_only(reads: dict, inputs: dict, target) -> None:
    bad = [n for n in reads if not all_finite(inputs[n])]
    if bad:
        s = reads[bad[0]]
        raise UnsupportedError(
            f"{s.loc or ''}: input '{bad[0]}' holds NaN or inf, and '{s.name}' reads it inside "
            f"where(cond, {bad[0]}, 0) of a sum over the keys: the {target} target computes that as where(cond, 1, 0) * {bad[0]} (the "
            f"pull_value_reads rewrite, what a P.V product can compute), which gives NaN where the reference "
            f"gives 0 at keys the condition hides. Replace them first (torch.nan_to_num({bad[0]}) for padding), "
            f"or use target='reference'")


_TUNE_LOCK = threading.Lock()

# targets differentiated by torch itself (the float64 oracle); every other target runs the
# backward einattn derives from the cascade (einattn/autograd.py)
GRAD_TARGETS = ("reference",)


def _grouped_reads(c) -> tuple:
    """(statement, tensor, subscript, declared dim) of every ``index // param`` input read."""
    out = []
    for s in c.stmts:
        for e in s.expr.walk():
            if e.op is Op.READ and c.input(e.arg[0]) is not None:
                dims = c.input(e.arg[0]).indices
                out += [(s, e.arg[0], sub, dims[j]) for j, sub in enumerate(e.arg[1]) if sub.div is not None]
    return tuple(out)


def _check_grouped_reads(reads, sizes: dict, params: dict) -> None:
    for s, t, sub, dim in reads:
        r = params[sub.div]
        if not float(r).is_integer() or r < 1:
            raise SpecError(f"param '{sub.div}' divides an index, so it must be a positive integer",
                            loc=s.loc, found=repr(r))
        last = (sizes[sub.index] - 1) // int(r)
        if last >= sizes[dim]:
            raise SpecError(f"'{t}[.., {sub}, ..]' reads past the end of dim '{dim}'",
                            loc=s.loc, expected=f"{dim} > {last}",
                            found=f"{dim} = {sizes[dim]}, {sub.index} = {sizes[sub.index]}, "
                                  f"{sub.div} = {int(r)}",
                            fix=f"make {sub.index} a multiple of {dim} ({sub.div} = {sub.index} // {dim})")


def explain(spec) -> Plan:
    """Analyse a spec: passes as written, rewrites, the pass plan.

    >>> p = explain("softmax"); (p.naive_passes, p.passes)
    (3, 1)

    A block-sparse spec (v1.1) gives its two stages (``compiler/selection.Stages``) and
    ``stages.plan``, the pass plan of the attention stage.
    """
    c = load_spec(spec)
    if c.selects:
        from einattn.compiler.selection import split
        return split(c)
    return make_plan(c)


def explain_backward(spec, wrt=None):
    """The derived backward of a spec (``compiler/autodiff`` and ``compiler/backward_plan``): the
    backward cascade, the stabilisers cut, what the forward saves, and the stages.

    >>> p = explain_backward("softmax"); p.backward.saved, [s.name for s in p.stages]
    (('M', 'L', 'O'), ['pre', 'dq', 'dkv'])
    """
    from einattn.compiler.autodiff import derive
    from einattn.compiler.backward_plan import plan_backward
    return plan_backward(derive(load_spec(spec), None if wrt is None else tuple(wrt)))


KERNEL_TARGETS = ("cpu", "cuda", "rocm")


def explain_kernel(spec, shape: dict | None = None, params: dict | None = None) -> str:
    """The kernel plan of a spec as text: index roles, per pass its typed ops, the lowering
    rules that apply and what they did, and whether each kernel target (cpu, cuda, rocm)
    can compile it, with the reason when it cannot (``check_capabilities``). With ``shape``
    (a size per index), also the tile program each target runs a call of that shape with
    (``compiler/decode.py``: decode for short queries), why, and its config.

    >>> print(explain_kernel("softmax").splitlines()[-3])
      cpu: yes
    """
    from einattn.compiler import check_capabilities, make_kernel_plan
    from einattn.compiler.lowering import describe_rules
    c = load_spec(spec)
    head = []
    if c.selects:               # block-sparse (v1.1): the kernel runs the attention stage
        from einattn.compiler.selection import split
        head = [f"{c.name} selects key blocks: the kernel runs its attention stage (einattn explain "
                f"{c.name} shows both stages); stage A runs on the host"]
        if shape is not None:
            from einattn.ir import bind_blocks, eval_params as values
            shape = bind_blocks(c, shape, values(c, shape, dict(params or {})))
        c = split(c).attend
    plan = make_plan(c)
    lines = head + [f"kernel plan of {plan.cascade.name}"]
    scan = _scan_lines(plan, shape, params)
    try:
        kp = make_kernel_plan(plan)
    except UnsupportedError as e:
        lines.append(f"no kernel plan: {e}")
        lines.append("targets:")
        lines += [f"  {t}: no: {e}" for t in KERNEL_TARGETS]
        return "\n".join(lines + scan)
    lines.append(kp.describe())
    lines.append("lowering rules:")
    lines += [f"  {x}" for x in describe_rules(kp)] or ["  (none applies)"]
    lines.append("targets:")
    ok = []
    for t in KERNEL_TARGETS:
        target = parse_target(t)
        try:
            check_capabilities(kp, get_backend(target).capabilities, target.kind)
            lines.append(f"  {t}: yes")
            ok.append(target)
        except UnsupportedError as e:
            lines.append(f"  {t}: no: {e}")
    if shape is not None:
        from einattn.ir import eval_params
        params = eval_params(plan.cascade, shape, dict(params or {}))
        lines.append(f"at {', '.join(f'{k}={v}' for k, v in shape.items())}:")
        for target in ok:
            backend = get_backend(target)
            text = backend.describe(backend.prepare(plan, target, {}), shape, params)
            lines.append(f"  {target}: " + text.replace("\n", "\n    "))
    return "\n".join(lines + scan)


def _scan_lines(plan: Plan, shape: dict | None, params: dict | None) -> list[str]:
    """What the chunked scan adds to ``explain_kernel`` for a linear cascade."""
    from einattn.compiler.linear import NotLinear, choose, linear_form
    try:
        form = linear_form(plan.original)
    except NotLinear as e:
        return [f"linear scan: no: {e}"]
    lines = ["linear scan: cpu, cuda, rocm (backends/linear.py; the quadratic kernel above where it runs)",
             "  " + form.describe().replace("\n", "\n  ")]
    if shape is not None:
        from einattn.ir import eval_params
        eval_params(plan.cascade, shape, dict(params or {}))
        quad = True
        try:
            from einattn.compiler import check_capabilities, make_kernel_plan
            check_capabilities(make_kernel_plan(plan), get_backend(parse_target("cpu")).capabilities, "cpu")
        except UnsupportedError as e:
            quad = str(e)
        try:
            from einattn.backends.base import threads
            ch = choose(form, shape, {}, quad is True, None if quad is True else quad, threads())
            lines.append(f"  at {', '.join(f'{k}={v}' for k, v in shape.items())} (cpu): {ch.describe()}")
        except UnsupportedError as e:
            lines.append(f"  at this shape: no scan: {e}")
    return lines


def compile(spec, *, target: str = "cpu", tune: str = "none", config: dict | None = None,
            interpret: bool | None = None, **params) -> Kernel:
    """Compile a spec for a target.

    Args:
        spec: a Spec, a path, YAML text or a zoo name.
        target: ``reference``, ``streaming``, ``cpu``, ``cuda[:sm_XX]`` or ``rocm[:gfxXXX]``.
        tune: ``"none"`` (the backend's default config, or ``config``), ``"quick"`` or ``"full"``:
            on the first call with a new shape bucket (query and key lengths and the number of
            (batch x head) programs rounded up to powers of two; exact head dims and dtype) the
            kernel looks the tuning database up (``EINATTN_CACHE_DIR``, then the records shipped
            with einattn); a hit measures nothing; a miss tunes at that effort (``quick``: about
            30 s on a 2-core CPU), stores the record and logs one line.
        config: kernel parameters, e.g. ``{"BLOCK_N": 64}``; unknown keys are errors. With
            ``tune`` they are pinned: the search covers the other keys.
        interpret: GPU targets only: run the rendered Triton kernel in Triton's
            interpreter on CPU tensors (default: the EINATTN_INTERPRET setting).
        **params: overrides of the spec's params (``scale=0.1``).

    >>> import torch
    >>> k = compile("softmax", target="streaming", config={"BLOCK_N": 16})
    >>> q = torch.randn(1, 2, 5, 8); v = torch.randn(1, 2, 7, 8)
    >>> k(q, torch.randn(1, 2, 7, 8), v).shape
    torch.Size([1, 2, 5, 8])
    """
    c = load_spec(spec)
    from einattn.autotune.tuner import EFFORTS
    if tune not in EFFORTS:
        raise TuningError(f"tune={tune!r}: expected one of {', '.join(map(repr, EFFORTS))}")
    known = {p.name for p in c.params}
    for k in params:
        if k not in known:
            raise SpecError(f"unknown param '{k}'", loc=Loc(c.file),
                            expected="one of: " + (", ".join(sorted(known)) or "(this spec has no params)"))
    t = parse_target(target)
    if c.selects:                            # spec v1.1: select key blocks, then attend
        from .sparse import compile_sparse
        return compile_sparse(c, t, tune, dict(config or {}), params, interpret)
    if interpret is None:
        interpret = settings.interpret() and t.kind in ("cuda", "rocm")
    if interpret and t.kind not in ("cuda", "rocm"):
        raise UnsupportedError(f"interpret=True applies to cuda and rocm targets (Triton's interpreter), "
                               f"not to '{t}'")
    backend = get_backend(t)
    plan = make_plan(c)
    options = {"interpret": True} if interpret else {}
    backend = _with_scan(backend, plan, tune)
    artifact = backend.prepare(plan, t, dict(config or {}), **options)
    if tune != "none" and getattr(backend, "space", None) is None:
        raise TuningError(f"tune={tune!r}: target '{t}' has nothing to tune; tunable targets: cpu, cuda, rocm, "
                          f"streaming (use tune='none')")
    return Kernel(c, plan, t, backend, artifact, params, config or {}, interpret=interpret, tune=tune)


def _with_scan(backend, plan: Plan, tune: str):
    """The target's backend, wrapped with the chunked scan where the cascade is linear
    (``backends/linear.py``; ``compiler/linear.py`` says why when it is not)."""
    if getattr(backend, "scan", None) is None:
        return backend
    from einattn.compiler.linear import NotLinear, linear_form
    try:
        form = linear_form(plan.original)
    except NotLinear:
        return backend
    if tune != "none":
        raise UnsupportedError(f"tune={tune!r}: {plan.original.name} is a linear cascade, and the autotuner does "
                               f"not search its algorithm and CHUNK yet; use tune='none' (the algorithm is chosen "
                               f"by cost per call) or pin config={{'ALGORITHM': 'quadratic'|'chunked', 'CHUNK': 64}}")
    from einattn.backends.linear import LinearBackend
    return LinearBackend(backend, form)


def _recompile(spec: Spec, target: str, params: dict, config: dict, interpret: bool, tune: str) -> Kernel:
    return compile(spec, target=target, tune=tune, config=config, interpret=interpret, **params)
