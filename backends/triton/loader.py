"""Kernel source on disk and its two imports: compiled (``@triton.jit``) and interpreted.

``@triton.jit`` needs a file: the source is written to ``<cache_dir>/triton/<hash>.py``
and imported once per mode. The interpreted import is made with Triton's
interpreter switched on, because ``@triton.jit`` reads it when it decorates.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from einattn.ir import settings

_MODULES: dict[tuple[str, bool], object] = {}


def write_source(source: str) -> Path:
    """Write kernel source under the cache dir, atomically; the name is its hash."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    root = settings.cache_dir() / "triton"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"einattn_{digest}.py"
    if not path.exists() or path.read_text() != source:
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    return path


def load_kernel(path: Path, name: str, interpret: bool):
    """Import the kernel module once per (file, mode); ``interpret`` decides what @triton.jit builds."""
    key = (str(path), interpret)
    if key not in _MODULES:
        import triton
        modname = f"einattn_triton_{path.stem}_{'interp' if interpret else 'jit'}"
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        with triton.knobs.runtime.scope():
            triton.knobs.runtime.interpret = interpret
            spec.loader.exec_module(mod)
        sys.modules[modname] = mod
        _MODULES[key] = mod
    return getattr(_MODULES[key], name)


@contextlib.contextmanager
def interpreting():
    """Let an interpreted kernel call ``tl.zeros``, ``tl.sum``... in a process where triton.language
    was imported without TRITON_INTERPRET (those helpers are then ``JITFunction``s, which only
    compile): swap them for interpreted twins for the duration of the call."""
    import triton.experimental.gluon  # noqa: F401  (imported lazily by launches; it wants the JIT originals)
    import triton.language as tl
    from triton.runtime.jit import JITFunction
    mods = [tl, tl.standard, tl.core, tl.math]
    saved = []
    try:
        for mod in mods:
            for name, member in list(vars(mod).items()):
                if isinstance(member, JITFunction):
                    saved.append((mod, name, member))
                    setattr(mod, name, _twin(member))
        yield
    finally:
        for mod, name, member in reversed(saved):
            setattr(mod, name, member)


_TWINS: dict = {}


def _twin(fn):
    from triton.runtime import interpreter

    class Twin(interpreter.InterpretedFunction):
        def __call__(self, *args, **kwargs):
            # Triton's own nested call patches triton.language.core and never restores it (harmless
            # when everything is interpreted); here the JIT compiler must find it untouched afterwards
            scope = interpreter._patch_lang(self.fn)
            try:
                return self.rewrite()(*args, **kwargs)
            except Exception as e:
                raise interpreter.InterpreterError(repr(e)) from e
            finally:
                scope.restore()

    if fn not in _TWINS:
        _TWINS[fn] = Twin(fn.fn)
    return _TWINS[fn]
