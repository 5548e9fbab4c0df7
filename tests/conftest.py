"""Session setup shared by every test.

The cache variables are set at import time of this module, before any test
module imports torch's inductor, triton or einattn's own cache, so a test run
never reads or writes the user's real caches. Each pytest process (each xdist
worker too) gets its own directory, removed when the process exits.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_CACHE_ROOT = tempfile.mkdtemp(prefix="einattn-tests-")
atexit.register(shutil.rmtree, _CACHE_ROOT, ignore_errors=True)
for _var, _sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                   ("EINATTN_CACHE_DIR", "einattn")):
    os.environ[_var] = os.path.join(_CACHE_ROOT, _sub)
    os.makedirs(os.environ[_var], exist_ok=True)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # explicit, to silence Triton's warning

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (inputs also use their own generators)."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cache_root() -> str:
    """The session's temporary cache directory (holds the three cache variables' folders)."""
    return _CACHE_ROOT
