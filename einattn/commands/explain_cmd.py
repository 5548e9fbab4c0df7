"""einattn explain SPEC: passes as written, the rewrites, the pass plan; --kernel: the kernel plan."""
from __future__ import annotations


def add(sub):
    p = sub.add_parser("explain", help="show the pass analysis and rewrites of a spec")
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--json", action="store_true", help="print the rewritten cascade's canonical JSON instead")
    p.add_argument("--kernel", action="store_true",
                   help="print the kernel plan instead: index roles, typed ops per pass, the lowering rules "
                        "that apply, and which targets (cpu, cuda, rocm) can compile it and why not")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    if args.kernel:
        from einattn.kernel import explain_kernel
        print(explain_kernel(args.spec))
        return 0
    plan = einattn.explain(args.spec)
    print(plan.cascade.canonical() if args.json else plan)
    return 0
