"""einattn check SPEC --target T --shape ...: run a target against the float64 reference."""
from __future__ import annotations

from .common import DTYPES, TOLERANCE, make_inputs, parse_assignments, parse_params, rel_error


def add(sub):
    p = sub.add_parser("check", help="run a target on random inputs and compare with the float64 reference")
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--target", default="cpu", help="reference, streaming, cpu, cuda[:sm_XX], rocm[:gfxXXX]")
    p.add_argument("--shape", default="b=2,h=4,m=77,n=131,d=64,e=64", help="dim sizes, e.g. b=2,h=4,m=77,n=131,d=64,e=64")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--param", action="append", help="override a spec param, e.g. --param scale=0.1")
    p.add_argument("--config", default=None, help="kernel parameters, e.g. BLOCK_N=64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None, help="max relative error (default by dtype)")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    spec = einattn.load_spec(args.spec)
    shape = parse_assignments(args.shape, "shape")
    params = parse_params(args.param)
    dtype = DTYPES[args.dtype]
    kern = einattn.compile(spec, target=args.target, config=parse_assignments(args.config, "config", False),
                           **params)
    ref = einattn.compile(spec, target="reference", **params)
    x = make_inputs(spec, shape, dtype, args.seed)
    got, want = kern(**x), ref(**x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    tol = args.tol if args.tol is not None else TOLERANCE[dtype]
    ok = True
    print(f"{spec.name} on {args.target}, {args.dtype}, shape {args.shape}, "
          f"{kern.plan.passes} pass(es) ({kern.plan.naive_passes} as written)")
    for name, g, w in zip(spec.outputs, got, want):
        err = rel_error(g, w)
        good = err <= tol
        ok &= good
        print(f"  {name}{list(w.shape)}: max |err| / max |ref| = {err:.3e}  (tol {tol:.0e})  "
              f"{'ok' if good else 'MISMATCH'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
