"""TVM's runtime for the CPU kernels: importing TVM, the host, thread pools and fork.

Threads: ``torch.get_num_threads()`` (of the calling thread) unless
``EINATTN_NUM_THREADS`` is set. TVM keeps one pool per calling thread; it is
told not to spin after a call (``TVM_THREAD_POOL_SPIN_COUNT=0``, set before TVM
starts its pool unless the user set it), so idle einattn workers do not steal
cores from PyTorch. TVM has no fork handler: see ``run_kernel``.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from einattn.ir import BackendUnavailable, settings

# Read by TVM when its thread pool starts (first parallel call), so set at import:
# no spinning after a call, no pinning (the cores are shared with PyTorch), and a pool as
# large as the CPUs we may use (TVM's default halves the count to skip hyper-threads).
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
os.environ.setdefault("TVM_BIND_THREADS", "0")
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1))

_LAUNCHER_LOCK = threading.Lock()         # the child launcher


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
    from .host import detect_host
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
    with _LAUNCHER_LOCK:
        if not _CHILD_LAUNCHER:
            from concurrent.futures import ThreadPoolExecutor
            _CHILD_LAUNCHER.append(ThreadPoolExecutor(1, thread_name_prefix="einattn-tvm"))
        return _CHILD_LAUNCHER[0]


def _after_fork_in_child() -> None:
    global _LAUNCHER_LOCK
    # the parent's other threads are gone: a lock one of them held would never be released
    _LAUNCHER_LOCK = threading.Lock()
    _CHILD_LAUNCHER.clear()                 # its thread is gone too (a grandchild starts its own)
    if getattr(_TLS, "threads", 0):
        _TLS.orphaned = True


os.register_at_fork(after_in_child=_after_fork_in_child)
