"""einattn list: the variant zoo."""
from __future__ import annotations


def add(sub):
    p = sub.add_parser("list", help="list the variant zoo (specs addressable by name)")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    for name in einattn.zoo_names():
        spec = einattn.load_spec(name)
        plan = einattn.explain(spec)
        print(f"{name:22s} {plan.naive_passes}->{plan.passes} pass  {spec.doc[:90]}")
    return 0
