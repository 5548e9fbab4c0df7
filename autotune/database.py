"""The tuning database: append-only JSON lines, one record per tuned workload.

A record (:class:`Record`) keeps its key (:class:`~einattn.autotune.key.TuningKey`),
the winning config with its time and GFLOP/s, the default config's time, whether it
was measured or ranked by a model (and which), the effort, and the table of every
candidate with its status. Appends take a file lock (``filelock``) and write one
whole line, so processes tuning at once lose nothing; a reader ignores a last line
still being written and skips a corrupt line with one warning. Lookups take the
newest record of a key. Location: ``EINATTN_CACHE_DIR/tuning/records.jsonl``; the
records shipped with einattn live in ``einattn/autotune/records/*.jsonl`` and are
consulted after the user's own.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from einattn.ir import settings

from .key import TuningKey

log = logging.getLogger("einattn.autotune")

STATUSES = ("ok", "invalid", "build_error", "crash", "timeout", "inaccurate", "not_measured")


@dataclass(frozen=True)
class Record:
    """One tuned workload. Times in milliseconds; ``measured`` False means ranked by ``model``."""
    key: TuningKey
    spec_name: str
    workload: dict                 # the exact sizes tuned at
    winner: dict
    ms: float | None
    gflops: float | None
    default: dict
    default_ms: float | None
    measured: bool
    model: str | None
    effort: str
    strategy: str
    candidates: tuple = ()         # ({config, status, ms, gflops, reason}, ...)
    worker: str = ""               # who measured: host name and the fingerprint id
    tuned_at: str = ""
    wall_s: float = 0.0
    source_sha: str | None = None  # sha256 of the winner's generated kernel source
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.key.id

    @property
    def speedup(self) -> float | None:
        """Default time over the winner's (measured records only)."""
        if not self.ms or not self.default_ms:
            return None
        return self.default_ms / self.ms

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["key"] = self.key.to_json()
        d["candidates"] = list(self.candidates)
        d["version"] = 1
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        if not isinstance(d, dict) or d.get("version") != 1:
            raise ValueError("not a version-1 record")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["key"] = TuningKey.from_json(d["key"])
        kw["candidates"] = tuple(d.get("candidates", ()))
        rec = cls(**kw)
        if not isinstance(rec.winner, dict) or not isinstance(rec.workload, dict):
            raise ValueError("winner and workload must be objects")
        return rec


def default_path() -> Path:
    return settings.cache_dir() / "tuning" / "records.jsonl"


class Database:
    """JSON-lines records at ``path`` (default ``EINATTN_CACHE_DIR/tuning/records.jsonl``)."""

    def __init__(self, path: str | os.PathLike | None = None, *, readonly: bool = False):
        self.path = Path(path) if path is not None else default_path()
        self.readonly = readonly
        self._seen: tuple | None = None           # (mtime_ns, size) of the parsed file
        self._records: list[Record] = []

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    @property
    def lock(self) -> filelock.FileLock:
        return filelock.FileLock(str(self.path) + ".lock", timeout=60)

    # -- reading ------------------------------------------------------------------------
    def records(self) -> list[Record]:
        """Every readable record, oldest first (parsed again only when the file changed)."""
        try:
            st = self.path.stat()
        except OSError:
            return []
        if self._seen == (st.st_mtime_ns, st.st_size):
            return list(self._records)
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            log.warning("einattn: cannot read the tuning database %s (%s); tuning records are ignored",
                        self.path, e)
            return []
        lines = text.split("\n")
        if lines and lines[-1] != "":
            lines = lines[:-1]                    # a line another process is still writing
        out, bad = [], []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(Record.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                bad.append((n, f"{type(e).__name__}: {e}"))
        if bad:
            log.warning("einattn: skipped %d corrupt line(s) of the tuning database %s (line %d: %s); "
                        "the other records are used. `einattn cache verify` lists them; a new tune appends "
                        "good ones", len(bad), self.path, bad[0][0], bad[0][1][:120])
        self._seen, self._records = (st.st_mtime_ns, st.st_size), out
        return list(out)

    def lookup(self, key: TuningKey) -> Record | None:
        """The newest record of ``key``, or None."""
        kid = key.id
        for rec in reversed(self.records()):
            if rec.id == kid:
                return rec
        return None

    def find(self, prefix: str) -> list[Record]:
        """Newest record of each key whose id starts with ``prefix``."""
        return [r for r in self.latest() if r.id.startswith(prefix)]

    def latest(self) -> list[Record]:
        """The newest record of each key, in order of first appearance."""
        by_id: dict[str, Record] = {}
        for r in self.records():
            by_id[r.id] = r
        return list(by_id.values())

    # -- writing ------------------------------------------------------------------------
    def append(self, *records: Record) -> None:
        """Append whole lines under the lock; a crash mid-write leaves at most a partial last line."""
        if self.readonly:
            raise PermissionError(f"{self.path} is read-only (the shipped records)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records).encode()
        with self.lock:
            with open(self.path, "ab") as f:
                if f.tell() and not _ends_with_newline(self.path):
                    f.write(b"\n")                # a partial line left by a crash stays one bad line
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def rewrite(self, records: list[Record]) -> None:
        """Replace the file's content atomically (``cache clear``, dedupe on import)."""
        if self.readonly:
            raise PermissionError(f"{self.path} is read-only (the shipped records)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records))
            os.replace(tmp, self.path)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def shipped_paths() -> list[Path]:
    """The records shipped in the package (``einattn/autotune/records/*.jsonl``)."""
    root = importlib.resources.files("einattn.autotune") / "records"
    try:
        return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".jsonl"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def shipped() -> list[Database]:
    return [Database(p, readonly=True) for p in shipped_paths()]


def lookup(key: TuningKey, db: Database | None = None) -> Record | None:
    """The user's database first, then the shipped records."""
    for d in [db or Database(), *shipped()]:
        rec = d.lookup(key)
        if rec is not None:
            return rec
    return None
