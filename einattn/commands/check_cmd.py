"""einattn check SPEC --target T --shape ...: run a target against the float64 reference.

Exits 0 when every output is within the tolerance, 1 on a mismatch, 2 on bad input.
With --backward it compares the gradients of every input (or of --wrt) instead: the
target's derived backward (on the reference target: the derived backward cascade run by the
float64 reference executor) against torch.autograd through the float64 reference.
The default dtype is float32: the tightest dtype every target runs, so a check is as
strict as it can be (1e-4 of the float64 reference); pass --dtype float16 or bfloat16
to check the precision GPU kernels usually run at.
"""
from __future__ import annotations

from einattn.inputs import (DTYPES, TOLERANCE, check_memory, make_inputs, parse_assignments, parse_params,
                            parse_shape, rel_error)

from einattn.ir import Loc, SpecError, UnsupportedError

from .common import seed_int, tolerance

DEFAULT_DTYPE = "float32"
DEFAULT_SHAPE = "b=2,h=4,m=77,n=131,d=64,e=64"


def add(sub):
    p = sub.add_parser("check", help="run a target on random inputs and compare with the float64 reference",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--target", default="cpu",
                   help="reference, streaming, cpu, cuda[:sm_XX], rocm[:gfxXXX] (default %(default)s)")
    p.add_argument("--shape", default=DEFAULT_SHAPE,
                   help="dim sizes, positive integers below 2**31 (default %(default)s)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help=f"input and kernel dtype (default {DEFAULT_DTYPE}: the strictest check every target runs)")
    p.add_argument("--param", action="append", help="override a spec param, e.g. --param scale=0.1")
    p.add_argument("--config", default=None, help="kernel parameters, e.g. BLOCK_N=64")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random inputs (default %(default)s)")
    p.add_argument("--tol", type=tolerance, default=None,
                   help="max relative error (default by dtype: " + ", ".join(
                       f"{k} {TOLERANCE[DTYPES[k]]:g}" for k in ("float64", "float32", "float16", "bfloat16")) + ")")
    p.add_argument("--backward", action="store_true",
                   help="compare gradients (random incoming gradients) instead of outputs")
    p.add_argument("--wrt", default=None, help="with --backward: inputs to differentiate, e.g. Q,K (default: all)")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    spec = einattn.load_spec(args.spec)
    shape = parse_shape(args.shape, spec)
    if args.shape == DEFAULT_SHAPE:
        from einattn.compiler.linear import NotLinear, linear_form
        try:                  # a causal linear cascade compares positions: as many queries as keys
            f = linear_form(spec)
            if f.causal and {f.query_index, f.key_index} <= set(shape):
                shape[f.query_index] = shape[f.key_index]
        except NotLinear:
            pass
    params = parse_params(args.param)
    dtype_name = args.dtype or DEFAULT_DTYPE
    dtype = DTYPES[dtype_name]
    check_memory(spec, shape, dtype, reference=True)
    kern = einattn.compile(spec, target=args.target, config=parse_assignments(args.config, "config", False),
                           **params)
    ref = einattn.compile(spec, target="reference", **params)
    x = make_inputs(spec, shape, dtype, args.seed)
    if args.wrt and not args.backward:
        raise UnsupportedError("--wrt names the inputs of the backward: use it with --backward")
    if args.backward:
        names, got, want = _gradients(spec, kern, ref, x, args.wrt, args.seed)
    else:
        names, got, want = spec.outputs, kern(**x), ref(**x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    tol = args.tol if args.tol is not None else TOLERANCE[dtype]
    ok = True
    print(f"{spec.name}{' backward' if args.backward else ''} on {args.target}, "
          f"{dtype_name}{'' if args.dtype else ' (default --dtype)'}, "
          f"shape {','.join(f'{k}={v}' for k, v in shape.items())}, "
          f"{kern.plan.passes} pass(es) ({kern.plan.naive_passes} as written)")
    for name, g, w in zip(names, got, want):
        err = rel_error(g, w)
        good = err <= tol
        ok &= good
        print(f"  {name}{list(w.shape)}: max |err| / max |ref| = {err:.3e}  (tol {tol:.0e})  "
              f"{'ok' if good else 'MISMATCH'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _gradients(spec, kern, ref, x: dict, wrt: str | None, seed: int):
    """(names, the target's gradients, the float64 reference's): d(sum outputs * random) / d input."""
    import torch
    names = tuple(w.strip() for w in wrt.split(",")) if wrt else tuple(x)
    bad = [n for n in names if n not in x]
    if bad:
        raise SpecError(f"--wrt: '{bad[0]}' is not an input of '{spec.name}'", loc=Loc(spec.file),
                        expected="one of: " + ", ".join(x))
    results = []
    if kern.target.kind == "reference":         # the derived backward itself, in float64
        from einattn.autograd import reference_gradients
        g = torch.Generator().manual_seed(seed + 1)
        out = ref(**x)
        out = out if isinstance(out, tuple) else (out,)
        grads = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out)
        got = reference_gradients(spec, x, grads, names, kern.params)
        results.append(tuple(got[n] for n in names))
        kern = None
    for k, dtype in ((kern, None), (ref, torch.float64)):
        if k is None:
            continue
        xs = {n: t.detach().to(dtype or t.dtype).requires_grad_(n in names) for n, t in x.items()}
        out = k(**xs)
        out = out if isinstance(out, tuple) else (out,)
        g = torch.Generator().manual_seed(seed + 1)
        grads = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in out]
        results.append(torch.autograd.grad(out, [xs[n] for n in names], grads, allow_unused=True))
    got, want = ([torch.zeros_like(x[n]) if t is None else t for n, t in zip(names, r)] for r in results)
    return tuple(f"d{n}" for n in names), tuple(got), tuple(want)
