"""The CPU backend: fused attention kernels generated with TVM for the host CPU.

``prepare`` classifies the plan (``make_kernel_plan``) and checks the config;
the kernel is rendered and built on the first call with a given *shape bucket*
(the sizes compiled in: contraction and value dims such as d and e; batch, heads
and sequence lengths stay runtime values, so one build serves every length).
Builds are cached in memory and on disk under ``settings.cache_dir()/cpu``,
keyed by the rewritten cascade's structural hash, the shape bucket, the dtype,
the config, the host target and a hash of the template and of the code that
fills it. Each library ``<key>.so`` has a sidecar ``<key>.json`` holding the key's
fields and the sha256 of the library; a library is loaded only when its bytes
match its sidecar, so a truncated or damaged file is reported (one RuntimeWarning)
and rebuilt instead of crashing the process in the loader. Processes building
the same key take turns on a lock file.

Inputs: float32 CPU tensors, passed to the kernel without copies (DLPack).
Any strides are accepted (views such as ``q.transpose(1, 2)`` of a [b, m, h, d]
projection, ``expand``ed per-head tensors) except in the last dimension of a
tensor whose rows are read as vectors (Q, K, V, G: their last index is a
compiled-in size such as d or e): such a tensor with a strided last dimension is
rejected with the fix (``.contiguous()``) rather than copied behind the caller's
back. float16 is rejected (this CPU has no fast fp16 arithmetic); float64 and
bfloat16 are rejected with the conversion to use. Offsets are 32-bit: a tensor
spanning 2**31 elements or more is rejected.

Threads: ``torch.get_num_threads()`` (of the calling thread) unless
``EINATTN_NUM_THREADS`` is set. TVM keeps one pool per calling thread; it is
told not to spin after a call (``TVM_THREAD_POOL_SPIN_COUNT=0``, set before TVM
starts its pool unless the user set it), so idle einattn workers do not steal
cores from PyTorch. TVM has no fork handler: see ``run_kernel``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import filelock
import torch

from einattn import settings
from einattn.compiler import KernelPlan, make_kernel_plan
from einattn.ir import BackendUnavailable, UnsupportedError

from .base import INDEX_LIMIT, Target, check_config, hidden_nonfinite, span
from .cpu_codegen import CpuConfig, render, static_indices, template_hash

log = logging.getLogger("einattn.cpu")

# Read by TVM when its thread pool starts (first parallel call), so set at import:
# no spinning after a call, no pinning (the cores are shared with PyTorch), and a pool as
# large as the CPUs we may use (TVM's default halves the count to skip hyper-threads).
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("TVM_BIND_THREADS", "0")
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1))

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
        for f in ("cpu_codegen.py", "cpu_expr.py"):
            h.update((here / f).read_bytes())
        _CODE_HASH = h.hexdigest()[:16]
    return _CODE_HASH


@dataclass
class CpuArtifact:
    """What ``prepare`` returns: the kernel plan and config; builds happen per shape bucket."""
    kp: KernelPlan
    config: CpuConfig
    static: tuple[str, ...]
    spec_hash: str
    builds: dict = field(default_factory=dict)      # shape bucket -> kernel
    skip: bool = True                               # hidden key tiles are skipped
    visit_all: "CpuArtifact | None" = None          # the variant that visits them, made on demand

    def for_inputs(self, inputs: dict) -> "CpuArtifact":
        """This artifact, or its variant that visits every key tile (see ``hidden_nonfinite``)."""
        if not hidden_nonfinite(self.kp, inputs):
            return self
        if self.visit_all is None:
            self.visit_all = dataclasses.replace(self, kp=self.kp.visiting_all(), builds={}, skip=False)
        return self.visit_all


class CpuBackend:
    name = "cpu"
    config_keys = tuple(CpuConfig.keys())

    def supports(self, target: Target) -> bool:
        return target.kind == "cpu"

    def prepare(self, plan, target: Target, config: dict, **options) -> CpuArtifact:
        if options:
            raise UnsupportedError(f"the cpu backend takes no options, got {sorted(options)}")
        cfg = CpuConfig(**check_config(self.name, config, CpuConfig.keys()))
        _check_tvm_installed()                    # fail early and clearly; importing TVM waits for a build
        cfg.check(host().fp32_lanes)
        kp = make_kernel_plan(plan)
        return CpuArtifact(kp, cfg, static_indices(kp), plan.cascade.structural_hash())

    def launch(self, artifact: CpuArtifact, inputs: dict, sizes: dict, params: dict) -> dict:
        c = artifact.kp.cascade
        args = [_check_input(t.name, inputs[t.name], bool(t.indices) and t.indices[-1] in artifact.static)
                for t in c.inputs]
        outs = {}
        for o in c.outputs:
            shape = [int(sizes[i]) for i in c.stmt(o).indices]
            outs[o] = torch.empty(shape, dtype=torch.float32)
        if all(t.numel() == 0 for t in outs.values()):
            return outs                    # no query rows (or an empty batch): nothing to compute
        bucket = tuple((i, int(sizes[i])) for i in artifact.static)
        zero = [f"{i}=0" for i, v in bucket if v == 0]
        if zero or any(t.numel() == 0 for t in outs.values()):
            raise UnsupportedError(f"{c.name}: sizes {', '.join(zero) or 'that empty an output but not all'} "
                                   f"on the cpu target: the kernel compiles these sizes in and needs them >= 1; "
                                   f"target='reference' gives the empty/zero result")
        artifact = artifact.for_inputs(dict(zip([t.name for t in c.inputs], args)))
        fn = artifact.builds.get(bucket)
        if fn is None:
            fn = artifact.builds[bucket] = get_kernel(artifact, dict(bucket))
        _check_offsets(list(zip([t.name for t in c.inputs], args)) + list(outs.items()))
        run_kernel(fn, (*args, *outs.values(), *[float(params[p.name]) for p in c.params]),
                   settings.num_threads() or torch.get_num_threads())
        return outs


# -- inputs --------------------------------------------------------------------------

def _check_input(name: str, t: torch.Tensor, unit_last: bool) -> torch.Tensor:
    if t.device.type != "cpu":
        raise UnsupportedError(f"input '{name}' is on {t.device}; the cpu target runs on CPU tensors "
                               f"(move it with .cpu() or compile for a GPU target)")
    if t.dtype != torch.float32:
        fix = {torch.float16: "this CPU has no fast fp16 arithmetic; convert with .float()",
               torch.bfloat16: "bf16 inputs are not supported yet; convert with .float()",
               torch.float64: "the kernel computes in float32; convert with .float() "
                              "(or use target='reference' for float64)"}.get(t.dtype, "convert with .float()")
        raise UnsupportedError(f"input '{name}' is {t.dtype}; the cpu target takes float32 tensors: {fix}")
    if unit_last and t.stride(-1) != 1:
        if t.size(-1) == 1:               # the stride of a size-1 dim is irrelevant: a zero-copy view
            return t.as_strided(t.shape, t.stride()[:-1] + (1,))
        raise UnsupportedError(f"input '{name}' has stride {t.stride(-1)} in its last dimension (shape "
                               f"{tuple(t.shape)}, strides {t.stride()}); the cpu kernel reads rows as vectors "
                               f"and needs it contiguous: pass {name}.contiguous() (other dims may have any stride)")
    return t


def _check_offsets(tensors) -> None:
    for name, t in tensors:
        reach = span(t.shape, t.stride())
        if reach >= INDEX_LIMIT:
            raise UnsupportedError(f"tensor '{name}' (shape {tuple(t.shape)}) spans {reach} elements; the cpu "
                                   f"kernel indexes with 32-bit integers (< 2**31): call it on slices of the "
                                   f"batch or heads, or, when one (batch, head) slice is that large, on chunks "
                                   f"of the query rows (they are independent)")


# -- TVM, threads, the host --------------------------------------------------------

def _tvm():
    """Import TVM's compiler (over a second: only to build, never to load a cached kernel)."""
    try:
        import tvm  # noqa: F401
        from tvm.script import tirx  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"the cpu target needs apache-tvm 0.27 (pip install apache-tvm==0.27.0.post1): "
                                 f"{e}") from None
    return tvm


def _check_tvm_installed() -> None:
    import importlib.util
    if importlib.util.find_spec("tvm") is None or importlib.util.find_spec("tvm_ffi") is None:
        raise BackendUnavailable("the cpu target needs apache-tvm 0.27 (pip install apache-tvm==0.27.0.post1)")


def host():
    from .targets.host import detect_host
    return detect_host(settings.cache_dir() / "cpu")


_RUNTIME: list = []


def _runtime():
    """Make TVM's runtime (thread pool, workspaces) available to tvm_ffi without importing
    TVM's compiler: loading a cached kernel then takes milliseconds instead of a second."""
    if not _RUNTIME:
        import ctypes
        import importlib.util
        import tvm_ffi
        if "tvm" not in sys.modules:
            spec = importlib.util.find_spec("tvm")
            lib = Path(spec.origin).parent / "lib" / "libtvm_runtime.so"
            if lib.exists():
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        _RUNTIME.append(tvm_ffi)
    return _RUNTIME[0]


_TLS = threading.local()      # per thread: the size told to its TVM pool, whether a fork orphaned that pool
_CHILD_LAUNCHER: list = []    # in a forked child: the executor that calls kernels for an orphaned thread


def set_threads(n: int) -> None:
    """Size the calling thread's TVM pool (TVM keeps one per thread; the first call creates it)."""
    if getattr(_TLS, "threads", 0) == n:
        return
    cfg = _runtime().get_global_func("runtime.config_threadpool", allow_missing=True)
    if cfg is not None:
        cfg(1, n)          # mode 1 (TVM's "big cores"); the count is capped by TVM_NUM_THREADS
    _TLS.threads = n


def run_kernel(fn, args: tuple, threads: int) -> None:
    """Call a built kernel on ``threads`` threads.

    TVM has no fork handler: in a forked child, the thread that forked keeps its
    pool, whose workers did not survive the fork, and waits for them forever.
    TVM cannot reset that pool either (its reset joins the dead workers). Such a
    thread hands its calls to a thread started in the child, for which TVM
    creates a new pool on first use, sized as here.
    """
    if getattr(_TLS, "orphaned", False):
        _child_launcher().submit(_call, fn, args, threads).result()
    else:
        _call(fn, args, threads)


def _call(fn, args: tuple, threads: int) -> None:
    set_threads(threads)
    fn(*args)


def _child_launcher():
    with _LOCK:
        if not _CHILD_LAUNCHER:
            from concurrent.futures import ThreadPoolExecutor
            _CHILD_LAUNCHER.append(ThreadPoolExecutor(1, thread_name_prefix="einattn-tvm"))
        return _CHILD_LAUNCHER[0]


def _after_fork_in_child() -> None:
    global _LOCK, _TVM_LOCK
    # the parent's other threads are gone: any lock one of them held would never be released
    _LOCK, _TVM_LOCK = threading.Lock(), threading.Lock()
    _CHILD_LAUNCHER.clear()                 # its thread is gone too (a grandchild starts its own)
    if getattr(_TLS, "threads", 0):
        _TLS.orphaned = True


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- build and cache ------------------------------------------------------------------

def cache_key(art: CpuArtifact, static: dict[str, int]) -> tuple[str, dict]:
    fields = {"spec": art.spec_hash, "shape": sorted(static.items()), "dtype": "float32",
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


def get_kernel(art: CpuArtifact, static: dict[str, int]):
    """The built kernel for a shape bucket: from memory, else the disk cache, else a build."""
    key, fields = cache_key(art, static)
    with _LOCK:
        fn = _MEMORY.get(key)
        if fn is None:
            fn = _MEMORY[key] = _load_or_build(art, static, settings.cache_dir() / "cpu" / f"{key}.so", fields)
        return fn


def _load_or_build(art: CpuArtifact, static: dict[str, int], path: Path, fields: dict):
    fn, problem = _load(path, fields)
    if fn is not None:
        return fn
    with _entry_lock(path):
        fn, problem = _load(path, fields)          # another process may have written it meanwhile
        if fn is not None:
            return fn
        if problem is not _MISSING:
            warnings.warn(f"einattn: ignoring the unreadable cpu kernel cache file {path} ({problem}); "
                          f"rebuilding it", RuntimeWarning, stacklevel=5)
        return _build(art, static, path, fields)


_MISSING = "no such file"


def check_entry(path: Path, fields: dict) -> str | None:
    """Why the cached library at ``path`` must not be loaded (``_MISSING`` if absent), or None.

    Loading an unchecked library is not an option: the loader maps a truncated
    file and the process dies of SIGBUS; flipped bytes may run as SIGILL.
    """
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return _MISSING
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except FileNotFoundError:
        return f"its sidecar {path.with_suffix('.json').name} is missing"
    except (OSError, ValueError) as e:
        return f"its sidecar is unreadable: {type(e).__name__}"
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in _as_json(fields).items()):
        return "its sidecar describes another kernel"
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return f"its sha256 differs from its sidecar's: {len(data)} bytes, {meta.get('bytes')} written"
    return None


def _as_json(fields: dict) -> dict:
    return json.loads(json.dumps(fields))


def _load(path: Path, fields: dict):
    """(kernel, None) from a checked cache entry, or (None, why not)."""
    problem = check_entry(path, fields)
    if problem is not None:
        return None, problem
    t0 = time.perf_counter()
    try:
        fn = load_library(path)["main"]
    except Exception as e:      # noqa: BLE001 - any unloadable file is rebuilt
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    log.info("loaded %s in %.3f s", path.name, time.perf_counter() - t0)
    return fn, None


@contextlib.contextmanager
def _entry_lock(path: Path):
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


def load_library(path: Path):
    """Load a built kernel library with tvm_ffi and TVM's runtime only."""
    return _runtime().load_module(str(path))


def build_source(art: CpuArtifact, static: dict[str, int]) -> str:
    return render(art.kp, art.config, static, host().fp32_lanes)


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


def _build(art: CpuArtifact, static: dict[str, int], path: Path, fields: dict):
    """Render, compile, write the library and its sidecar to the disk cache and load it from there
    (linking the library costs about what TVM's JIT would, so the cache write is free)."""
    t0 = time.perf_counter()
    src = build_source(art, static)
    with _TVM_LOCK:
        ex = build_module(src)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.so")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            ex.export_library(str(tmp))
            _write_entry(tmp, path, fields)
            fn = load_library(path)["main"]
        except Exception as e:             # noqa: BLE001 - the disk cache is an optimisation
            with contextlib.suppress(OSError):
                tmp.unlink()
            warnings.warn(f"einattn: could not write the cpu kernel cache file {path} ({e}); "
                          f"using the kernel from memory", RuntimeWarning, stacklevel=6)
            fn = ex["main"]
    log.info("built %s in %.3f s", path.name, time.perf_counter() - t0)
    return fn


def _write_entry(tmp: Path, path: Path, fields: dict) -> None:
    """Move a library written to ``tmp`` into the cache with its sidecar. Each file is replaced
    atomically, the sidecar first: a reader sees the old pair, the new sidecar with the old library
    (a mismatch, so it waits for the lock and reads again) or the new pair, never a library
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
