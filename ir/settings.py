"""Every environment variable einattn reads, in one place (the bottom layer: any module may import it)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """EINATTN_CACHE_DIR, default ~/.cache/einattn."""
    return Path(os.environ.get("EINATTN_CACHE_DIR") or Path.home() / ".cache" / "einattn")


def log_level() -> str:
    """EINATTN_LOG: one of debug, info, warning (default)."""
    return os.environ.get("EINATTN_LOG", "warning").lower()


def num_threads() -> int | None:
    """EINATTN_NUM_THREADS: threads for CPU kernels (default: torch.get_num_threads())."""
    v = os.environ.get("EINATTN_NUM_THREADS")
    return int(v) if v and v.isdigit() and int(v) > 0 else None


def interpret() -> bool:
    """EINATTN_INTERPRET=1: run GPU kernels in Triton's interpreter on CPU tensors."""
    return os.environ.get("EINATTN_INTERPRET", "0") not in ("", "0", "false", "False")
