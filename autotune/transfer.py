"""Moving tuning records (and, for the CPU, built kernels) between machines.

``export`` writes a ``.jsonl`` file of records, or a ``.tar.gz`` bundle of the records
(``records.jsonl``) and the CPU kernel cache (``cpu/``: every built library with its
checked sidecar, loaded on the other machine only when its key and bytes match).
``import_records`` appends the records whose fingerprint applies here and refuses the
others, saying which field differs; kernels are copied into the cache.
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from einattn.backends import get_backend, parse_target
from einattn.ir import EinattnError, TuningError, settings

from .database import Database, Record
from .key import einattn_version, fingerprint_difference
from .tuner import fingerprint


def export(db: Database, path: Path) -> tuple[int, int]:
    """Write the newest record of each key (and with ``.tar.gz`` the CPU kernels); (records, kernels)."""
    recs = db.latest()
    text = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in recs)
    path = Path(path)
    if path.name.endswith(".jsonl"):
        path.write_text(text)
        return len(recs), 0
    if not path.name.endswith((".tar.gz", ".tgz")):
        raise TuningError(f"cannot export to {path}: name it FILE.jsonl (records) or FILE.tar.gz (records and "
                          f"the CPU kernels)")
    kernels = 0
    with tarfile.open(path, "w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("records.jsonl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        cpu = settings.cache_dir() / "cpu"
        if cpu.is_dir():
            for f in sorted(cpu.iterdir()):
                if f.is_file() and not f.name.startswith(".") and not f.name.endswith(".lock"):
                    tar.add(f, arcname=f"cpu/{f.name}")
                    kernels += f.suffix != ".json"
    return len(recs), kernels


def applies_here(rec: Record) -> list[str]:
    """Why a record cannot be used on this machine (fingerprint fields that differ), or []."""
    try:
        t = parse_target(rec.key.target)
        here = {**fingerprint(get_backend(t), t), "einattn": einattn_version()}
    except EinattnError as e:
        return [str(e)]
    return fingerprint_difference(dict(rec.key.fingerprint), here)


def import_records(db: Database, path: Path) -> tuple[list[Record], list[tuple[Record, list[str]]], int]:
    """Append the applicable records of a ``.jsonl`` or ``.tar.gz`` file; (imported, refused, kernels)."""
    path = Path(path)
    kernels = 0
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile("records.jsonl")
            text = member.read().decode() if member else ""
            cpu = settings.cache_dir() / "cpu"
            for m in tar.getmembers():
                name = Path(m.name)
                if m.isfile() and name.parts[0] == "cpu" and len(name.parts) == 2:
                    cpu.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    tmp = cpu / f".{name.name}.import.tmp"
                    with open(tmp, "wb") as f:
                        shutil.copyfileobj(src, f)
                    tmp.replace(cpu / name.name)
                    kernels += name.suffix != ".json"
    else:
        text = path.read_text()
    src_records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                src_records.append(Record.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise TuningError(f"{path}:{n}: not a tuning record ({type(e).__name__}: {e})") from None
    have = {json.dumps(r.to_json(), sort_keys=True) for r in db.records()}
    good, refused = [], []
    for r in src_records:
        why = applies_here(r)
        if why:
            refused.append((r, why))
        elif json.dumps(r.to_json(), sort_keys=True) not in have:
            good.append(r)
    if good:
        db.append(*good)
    return good, refused, kernels
