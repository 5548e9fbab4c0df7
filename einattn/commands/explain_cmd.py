"""einattn explain SPEC: passes as written, the rewrites, the pass plan; --kernel: the kernel plan;
--backward: the derived backward (cascade, stop-gradient, saved values, stages and their passes)."""
from __future__ import annotations

from einattn.ir import UnsupportedError


def add(sub):
    p = sub.add_parser("explain", help="show the pass analysis and rewrites of a spec")
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--json", action="store_true", help="print the rewritten cascade's canonical JSON instead")
    p.add_argument("--kernel", action="store_true",
                   help="print the kernel plan instead: index roles, typed ops per pass, the lowering rules "
                        "that apply, and which targets (cpu, cuda, rocm) can compile it and why not")
    p.add_argument("--shape", default=None,
                   help="with --kernel: sizes of a call, e.g. b=1,h=32,g=8,m=1,n=8192,d=128,e=128; prints the "
                        "tile program (decode or tile) each target runs it with, why, and the config")
    p.add_argument("--param", action="append", default=None, help="a spec param for --shape, e.g. W=128")
    p.add_argument("--backward", action="store_true",
                   help="print the derived backward instead: the backward cascade, the stabilisers cut "
                        "(stop-gradient), what the forward saves, and the dq/dkv kernels and torch stages")
    p.add_argument("--wrt", default=None,
                   help="with --backward: the inputs to differentiate, e.g. Q,K (default: every input)")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    if args.shape and not args.kernel:
        raise UnsupportedError("--shape shows the tile program a call gets: use it with --kernel")
    if args.wrt and not args.backward:
        raise UnsupportedError("--wrt names the inputs of the backward: use it with --backward")
    if args.backward:
        wrt = tuple(x.strip() for x in args.wrt.split(",")) if args.wrt else None
        print(einattn.explain_backward(args.spec, wrt))
        return 0
    if args.kernel:
        from einattn.inputs import parse_assignments, parse_shape
        from einattn.kernel import explain_kernel
        shape = parse_shape(args.shape, einattn.load_spec(args.spec)) if args.shape else None
        params = {}
        for item in args.param or ():
            params.update(parse_assignments(item, "param"))
        print(explain_kernel(args.spec, shape, params))
        return 0
    plan = einattn.explain(args.spec)
    print(plan.cascade.canonical() if args.json else plan)
    return 0
