"""einattn explain SPEC: passes as written, the rewrites, the pass plan."""
from __future__ import annotations


def add(sub):
    p = sub.add_parser("explain", help="show the pass analysis and rewrites of a spec")
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--json", action="store_true", help="print the rewritten cascade's canonical JSON instead")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    plan = einattn.explain(args.spec)
    print(plan.cascade.canonical() if args.json else plan)
    return 0
