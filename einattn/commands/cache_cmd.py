"""einattn cache list|show|export|import|verify|clear: the tuning database.

The database is EINATTN_CACHE_DIR/tuning/records.jsonl (JSON lines); einattn also
ships tuned records for the zoo, consulted after yours. ``verify`` (no file: the
shipped records) generates each record's kernel again from today's code, compiles
it, checks it against the float64 reference at a small shape and names every
stale record; it exits 1 when one is stale or fails.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def add(sub):
    p = sub.add_parser("cache", help="list, show, move, verify or clear tuning records",
                       description=__doc__.split("\n\n")[0])
    act = p.add_subparsers(dest="action", required=True)
    a = act.add_parser("list", help="the newest record of each key")
    a.add_argument("--shipped", action="store_true", help="list the records shipped with einattn instead")
    a = act.add_parser("show", help="one record in full (JSON)")
    a.add_argument("key", help="a record key (or a unique prefix) from `einattn cache list`")
    a = act.add_parser("export", help="write records (FILE.jsonl) or records and CPU kernels (FILE.tar.gz)")
    a.add_argument("file")
    a = act.add_parser("import", help="add the records of FILE that apply to this machine")
    a.add_argument("file")
    a = act.add_parser("verify", help="check records against today's code and toolchain (exit 1 if stale)")
    a.add_argument("file", nargs="?", help="a .jsonl of records (default: the shipped records)")
    a.add_argument("--user", action="store_true", help="verify your own database instead")
    a.add_argument("--no-check", action="store_true", help="skip compiling and running the kernels")
    a.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes verifying at once (default: the CPU count, %(default)s)")
    a = act.add_parser("clear", help="delete your tuning records (the shipped ones stay)")
    p.set_defaults(run=run)


def run(args) -> int:
    from einattn.ir import TuningError
    try:
        return _run(args)
    except OSError as e:                  # a file named on the command line: bad input, not a bug
        raise TuningError(f"{args.action}: {e.strerror or e} ({e.filename or getattr(args, 'file', '')})") from None


def _run(args) -> int:
    from einattn.autotune import database, report
    db = database.Database()
    if args.action == "list":
        sources = [(d, "shipped") for d in database.shipped()] if args.shipped else [(db, "user")]
        recs = [(r, s) for d, s in sources for r in d.latest()]
        if not recs:
            print(f"no records in {', '.join(str(d.path) for d, _ in sources) or 'the package'}")
            return 0
        for s in dict.fromkeys(s for _, s in recs):
            print(report.list_table([r for r, t in recs if t == s], s))
        return 0
    if args.action == "show":
        hits = db.find(args.key) + [r for d in database.shipped() for r in d.find(args.key)]
        if len({r.id for r in hits}) != 1:
            from einattn.ir import TuningError
            what = "no record" if not hits else f"{len({r.id for r in hits})} records"
            raise TuningError(f"{what} with a key starting '{args.key}'; `einattn cache list` (and --shipped) "
                              f"shows the keys")
        print(json.dumps(hits[0].to_json(), indent=2, sort_keys=True))
        print(report.candidate_table(hits[0]))
        return 0
    if args.action == "export":
        from einattn.autotune.transfer import export
        n, k = export(db, Path(args.file))
        print(f"exported {n} record(s)" + (f" and {k} CPU kernel(s)" if k else "") + f" to {args.file}")
        return 0
    if args.action == "import":
        from einattn.autotune.transfer import import_records
        good, refused, k = import_records(db, Path(args.file))
        print(f"imported {len(good)} record(s)" + (f" and {k} CPU kernel file(s)" if k else "") + f" into {db.path}")
        for r, why in refused:
            print(f"refused {r.id} {r.spec_name} on {r.key.target}: its fingerprint does not apply here: "
                  + "; ".join(why), file=sys.stderr)
        return 0
    if args.action == "verify":
        from einattn.autotune.verify import verify_all
        if args.file:
            dbs = [database.Database(args.file, readonly=True)]
        else:
            dbs = [db] if args.user else database.shipped()
        recs = [r for d in dbs for r in d.latest()]
        bad = 0
        for v in verify_all(recs, check=not args.no_check, jobs=max(1, args.jobs)):
            print(v.line(), flush=True)
            bad += v.status in ("stale", "failed")
        print(f"{len(recs)} record(s): {len(recs) - bad} ok or skipped, {bad} stale or failed")
        return 1 if bad else 0
    if args.action == "clear":
        n = len(db.records())
        if db.path.exists():
            db.rewrite([])
        print(f"cleared {n} record(s) from {db.path}")
        return 0
    raise AssertionError(args.action)
