"""einattn tune SPEC --target T --shape ... --effort quick|full: search a kernel's tunables for one workload.

Shows a progress bar while it runs, then the table of candidates (config, ms,
GFLOP/s, status), the winner and its speed-up over the default config, and stores
the record in the tuning database (EINATTN_CACHE_DIR) unless --no-store. GPU
targets on a machine without that GPU are ranked by a model (roofline and
occupancy from the ahead-of-time compiled kernel), not measured; the table says so.
"""
from __future__ import annotations

import sys

from einattn.inputs import DTYPES, parse_assignments, parse_params, parse_shape

from .common import positive_int


def add(sub):
    p = sub.add_parser("tune", help="tune a kernel's tile and split parameters for one workload",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a .yaml path or a zoo name")
    p.add_argument("--target", default="cpu", help="cpu, cuda[:sm_XX], rocm[:gfxXXX] or streaming "
                                                   "(default %(default)s)")
    p.add_argument("--shape", required=True, help="dim sizes, e.g. b=1,h=8,m=16,n=8192,d=64,e=64")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="input dtype (default float32 on the cpu, float16 on GPU targets)")
    p.add_argument("--effort", default="quick", choices=("quick", "full"),
                   help="quick: about 30 s per workload on a 2-core CPU; full: a wider search (default %(default)s)")
    p.add_argument("--param", action="append", help="override a spec param, e.g. --param scale=0.1")
    p.add_argument("--config", default=None, help="pin tunables, e.g. KV_SPLITS=1: the search covers the rest")
    p.add_argument("--strategy", choices=("exhaustive", "optuna"), default=None,
                   help="force a search strategy (default: exhaustive for small spaces, else optuna)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per candidate (default %(default)s)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process; ray: spread over a Ray cluster (the `ray` extra)")
    p.add_argument("--address", default=None, help="with --executor ray: the cluster address (default: a "
                                                   "local Ray instance)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="with --executor local: build each batch's kernels in this many processes first "
                        "(default %(default)s: build while measuring)")
    p.add_argument("--no-store", action="store_true", help="do not write the record to the tuning database")
    p.add_argument("--if-missing", action="store_true",
                   help="print the stored record when one exists (yours, then the shipped ones) instead of tuning")
    p.set_defaults(run=run)


def run(args) -> int:
    import einattn
    from einattn.autotune import executor as executors
    from einattn.autotune.database import Database
    from einattn.autotune.measure import Task
    from einattn.autotune.report import candidate_table, summary
    from einattn.autotune.tuner import tune_each
    from einattn.backends import parse_target
    from einattn.backends.base import Workload
    from einattn.ir import SpecError, Loc

    spec = einattn.load_spec(args.spec)
    shape = parse_shape(args.shape, spec)
    t = parse_target(args.target)
    if args.address and args.executor != "ray":
        raise SpecError("--address applies to --executor ray", loc=Loc("<command line>"),
                        fix="add --executor ray or drop --address")
    dtype = args.dtype or ("float16" if t.kind in ("cuda", "rocm") else "float32")
    dtype = str(DTYPES[dtype]).replace("torch.", "")
    from einattn.ir import bind_sizes
    sizes = bind_sizes(spec, {x.name: tuple(shape[i] for i in x.indices) for x in spec.inputs})
    task = Task(spec, str(t), Workload.of(sizes, dtype), tuple(sorted(parse_params(args.param).items())))
    if args.if_missing:
        from einattn.autotune.database import lookup
        from einattn.autotune.tuner import tuning_key
        hit = lookup(tuning_key(task))
        if hit is not None:
            print(candidate_table(hit))
            print(summary(hit))
            print(f"found {hit.id}: not tuned again (--if-missing)")
            return 0
    ex = executors.create(args.executor, **({"address": args.address} if args.executor == "ray" else
                                            {"jobs": args.jobs}))
    bar = _progress()
    try:
        recs = tune_each(task, ex, effort=args.effort, pinned=parse_assignments(args.config, "config", False),
                         progress=bar, store=not args.no_store, strategy=args.strategy, repeats=args.repeats)
    finally:
        bar.close()
    for rec in recs:
        if len(recs) > 1:
            print(f"workers {rec.worker}, fingerprint {rec.key.fingerprint_id}:")
        print(candidate_table(rec))
        print(summary(rec))
        if not args.no_store:
            print(f"stored as {rec.id} in {Database().path}")
    return 0


class _progress:
    """A tqdm bar on stderr, made on the first report (the total is known then)."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int, outcome) -> None:
        from tqdm import tqdm
        if self.bar is None:
            self.bar = tqdm(total=total, desc="tuning", unit="cfg", file=sys.stderr, leave=False)
        self.bar.total = max(self.bar.total or 0, total)
        self.bar.set_postfix_str(f"{outcome.status} {outcome.ms:.3g} ms" if outcome.ms else outcome.status)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
