"""einattn list: the variant zoo, one line each (``einattn explain NAME`` prints a whole description)."""
from __future__ import annotations

import shutil
import textwrap

MIN_DOC_WIDTH = 40      # a narrower terminal still gets this much of each description


def add(sub):
    p = sub.add_parser("list", help="list the variant zoo (specs addressable by name)",
                       description="List the variant zoo: name, passes as written -> planned, description "
                                   "(shortened at a word boundary to fit the terminal, $COLUMNS or 80 columns, "
                                   "unless --full).")
    p.add_argument("--full", action="store_true", help="print whole descriptions instead of shortening them")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    width = shutil.get_terminal_size().columns      # $COLUMNS, else the terminal's, else 80
    for name in einattn.zoo_names():
        spec = einattn.load_spec(name)
        plan = einattn.explain(spec)
        if spec.selects:                # block-sparse: the attention stage's passes
            plan = plan.plan
        head = f"{name:22s} {plan.naive_passes}->{plan.passes} pass  "
        doc = " ".join(spec.doc.split())
        if not args.full:
            doc = textwrap.shorten(doc, max(width - len(head) - 1, MIN_DOC_WIDTH), placeholder=" ...",
                                   break_on_hyphens=False)     # "re-weighting" is one word
        print(head + doc)
    return 0
