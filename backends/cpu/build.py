"""Building CPU kernels with TVM, and the checked disk cache they are kept in.

Builds are cached in memory and on disk under ``settings.cache_dir()/cpu``,
keyed by the rewritten cascade's structural hash, the shape bucket, the dtype,
the config, the host target and a hash of the template and of the code that
fills it. Each library ``<key>.so`` has a sidecar ``<key>.json`` holding the key's
fields and the sha256 of the library (``backends/cache.py``); a library is loaded
only when its bytes match its sidecar, so a truncated or damaged file is reported
(one RuntimeWarning) and rebuilt instead of crashing the process in the loader.
Processes building the same key take turns on a lock file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path

from einattn.ir import settings

from .. import cache
from .render import render, template_hash
from .runtime import _runtime, _tvm, host

log = logging.getLogger("einattn.cpu")

_MEMORY: dict[str, object] = {}          # cache key -> callable kernel
_LOCK = threading.Lock()                 # the in-memory cache
_TVM_LOCK = threading.Lock()             # TVM's compiler is not thread-safe: builds and exports take turns
_CODE_HASH: str | None = None


def code_hash() -> str:
    """Hash of everything that turns a plan into kernel source (template + renderer + printer)."""
    global _CODE_HASH
    if _CODE_HASH is None:
        here = Path(__file__).resolve().parent
        h = hashlib.sha256(template_hash().encode())
        for f in ("render.py", "view.py", "decode.py", "expr.py", "pairs.py", "config.py", "../printer.py"):
            h.update((here / f).read_bytes())
        _CODE_HASH = h.hexdigest()[:16]
    return _CODE_HASH


def cache_key(art, static: dict[str, int], dtypes: dict | None = None) -> tuple[str, dict]:
    fields = {"spec": art.spec_hash, "shape": sorted(static.items()), "dtype": sorted((dtypes or {}).items()),
              "bf16_dot": host().has_bf16,
              "config": dataclasses.asdict(art.config), "target": host().fingerprint(),
              "code": code_hash(), "tvm": _tvm_version(), "skip": art.skip,
              "layout": 2}        # layout 2: sidecars hold the library's sha256
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24], fields


def _tvm_version() -> str:
    try:
        from importlib.metadata import version
        return version("apache-tvm")
    except Exception:          # noqa: BLE001 - a source build has no metadata
        return "unknown"


def get_kernel(art, static: dict[str, int], dtypes: dict | None = None):
    """The built kernel for a shape bucket and the dtypes of the inputs and outputs that are not
    float32: from memory, else the disk cache, else a build."""
    key, fields = cache_key(art, static, dtypes)
    return get_built(key, fields, lambda: build_source(art, static, dtypes))


def get_built(key: str, fields: dict, source):
    """The library of ``key`` (its sidecar holds ``fields``): from memory, else the disk cache, else
    built from ``source()``, the TVMScript text."""
    with _LOCK:
        fn = _MEMORY.get(key)
        if fn is None:
            fn = _MEMORY[key] = _load_or_build(source, settings.cache_dir() / "cpu" / f"{key}.so", fields)
        return fn


def _load_or_build(source, path: Path, fields: dict):
    fn, problem = _load(path, fields)
    if fn is not None:
        return fn
    with cache.entry_lock(path):
        fn, problem = _load(path, fields)          # another process may have written it meanwhile
        if fn is not None:
            return fn
        if problem is not cache.MISSING:
            warnings.warn(f"einattn: ignoring the unreadable cpu kernel cache file {path} ({problem}); "
                          f"rebuilding it", RuntimeWarning, stacklevel=5)
        return _build(source, path, fields)


def _load(path: Path, fields: dict):
    """(kernel, None) from a checked cache entry, or (None, why not)."""
    problem = cache.check_entry(path, fields)
    if problem is not None:
        return None, problem
    t0 = time.perf_counter()
    try:
        fn = load_library(path)["main"]
    except Exception as e:      # noqa: BLE001 - any unloadable file is rebuilt
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    log.info("loaded %s in %.3f s", path.name, time.perf_counter() - t0)
    return fn, None


def load_library(path: Path):
    """Load a built kernel library with tvm_ffi and TVM's runtime only."""
    return _runtime().load_module(str(path))


def build_source(art, static: dict[str, int], dtypes: dict | None = None) -> str:
    return render(art.kp, art.config, static, host().fp32_lanes, dtypes, host().has_bf16)


def build_module(source: str):
    """Parse the TVMScript and compile it for the host: the TVM executable."""
    tvm = _tvm()
    try:
        mod = tvm.script.from_source(source)
    except Exception as e:
        raise RuntimeError(f"einattn internal error: the rendered CPU kernel does not parse:\n{e}") from e
    # StorageRewrite would drop the "disable_lower_builtin" annotation that keeps the kernel's
    # tiles on the stack (TVM puts buffers over 1 KiB in heap workspaces otherwise, which LLVM
    # cannot prove free of aliasing: every loop then reloads sizes and spills accumulators)
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_storage_rewrite": True}):
        return tvm.compile(mod, tvm.target.Target(host().tvm_target()))


def _build(source, path: Path, fields: dict):
    """Render, compile, write the library and its sidecar to the disk cache and load it from there
    (linking the library costs about what TVM's JIT would, so the cache write is free)."""
    t0 = time.perf_counter()
    src = source()
    with _TVM_LOCK:
        ex = build_module(src)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.so")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ex.export_library(str(tmp))
            cache.write_entry(tmp, path, fields)
            fn = load_library(path)["main"]
        except Exception as e:             # noqa: BLE001 - the disk cache is an optimisation
            with contextlib.suppress(OSError):
                tmp.unlink()
            warnings.warn(f"einattn: could not write the cpu kernel cache file {path} ({e}); "
                          f"using the kernel from memory", RuntimeWarning, stacklevel=6)
            fn = ex["main"]
    log.info("built %s in %.3f s", path.name, time.perf_counter() - t0)
    return fn


def _after_fork_in_child() -> None:
    global _LOCK, _TVM_LOCK
    # the parent's other threads are gone: a lock one of them held would never be released
    _LOCK, _TVM_LOCK = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
