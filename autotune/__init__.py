"""einattn.autotune: per-target search of kernel tunables and the tuning database.

One module per concept (docs/tuning.md): ``key`` (shape buckets, fingerprints, record keys),
``database`` (JSON lines under a file lock, shipped records), ``measure`` (build, check against
the float64 reference, interleaved timing with an injectable clock), ``strategy`` (exhaustive,
optuna TPE), ``executor`` / ``ray_executor`` (where candidates run), ``tuner`` (the search and
the records it writes), ``verify`` and ``transfer`` (records against today's code; between
machines), ``report`` (tables), ``cost`` (useful FLOPs). The search spaces themselves are
declared by each backend's config class (``space``, ``validate``) and reached only through the
backend interface.
"""
from .database import Database, Record
from .key import TuningKey, shape_bucket
from .measure import Outcome, Task
from .tuner import EFFORTS, lookup_or_tune, tune, tune_each

__all__ = ["Database", "Record", "TuningKey", "shape_bucket", "Outcome", "Task", "EFFORTS", "lookup_or_tune",
           "tune", "tune_each"]
