"""A checked file cache: entries that are loaded only when their bytes match their sidecar.

An entry is a file ``<key>.<ext>`` and its sidecar ``<key>.json``, which holds the
fields the key was made from and the sha256 of the file. ``check_entry`` says
why an entry must not be used (absent, sidecar missing or for another key,
bytes changed); ``write_entry`` moves a new file into place with its sidecar,
each replaced atomically; ``entry_lock`` lets processes building one key take
turns. Used by the CPU kernel cache; the same rules serve any cached artifact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path

import filelock

log = logging.getLogger("einattn.cache")

MISSING = "no such file"


def check_entry(path: Path, fields: dict) -> str | None:
    """Why the cached file at ``path`` must not be loaded (``MISSING`` if absent), or None.

    Loading an unchecked library is not an option: the loader maps a truncated
    file and the process dies of SIGBUS; flipped bytes may run as SIGILL.
    """
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return f"its sidecar {path.with_suffix('.json').name} is missing"
    except (OSError, ValueError) as e:
        return f"its sidecar is unreadable: {type(e).__name__}"
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in as_json(fields).items()):
        return "its sidecar describes another entry"
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return f"its sha256 differs from its sidecar's: {len(data)} bytes, {meta.get('bytes')} written"
    return None


def as_json(fields: dict) -> dict:
    return json.loads(json.dumps(fields))


@contextlib.contextmanager
def entry_lock(path: Path):
    """Processes building one key take turns. The cache stays sound without the lock (writes are
    atomic and every load is checked), so a lock that cannot be had costs a duplicate build only."""
    lock = filelock.FileLock(path.with_name(f".{path.stem}.lock"), timeout=600)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as e:        # filelock.Timeout is an OSError
        log.info("building %s without the cache lock (%s)", path.name, e)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def write_entry(tmp: Path, path: Path, fields: dict) -> None:
    """Move a file written to ``tmp`` into the cache with its sidecar. Each file is replaced
    atomically, the sidecar first: a reader sees the old pair, the new sidecar with the old library
    (a mismatch, so it waits for the lock and reads again) or the new pair, never a file
    without its sidecar."""
    data = tmp.read_bytes()
    meta = {**fields, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    side = tmp.with_suffix(".json")
    try:
        side.write_text(json.dumps(meta, sort_keys=True, indent=1))
        os.replace(side, path.with_suffix(".json"))
    finally:
        side.unlink(missing_ok=True)
    os.replace(tmp, path)
