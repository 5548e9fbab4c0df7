"""What a tuning record is keyed by: the rewritten cascade, a shape bucket, the dtype and
the target's fingerprint, each a named field.

The bucket is loose where speed changes slowly and exact where the kernel changes:
the query length, the key length and the number of (batch x head) programs are
rounded up to powers of two; the compiled-in sizes (head dims d, e) and the params
that divide an index (a GQA head ratio) are exact. The fingerprint names every fact
of the machine and toolchain that changes the generated code or its speed (see each
backend's ``fingerprint``), plus the einattn version.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import metadata

from einattn.backends.base import Workload
from einattn.ir import Op


def pow2_ceil(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(0, math.ceil(math.log2(max(int(x), 1))))


def shape_bucket(kp, workload: Workload, params: dict | None = None) -> dict[str, int]:
    """The bucket of a workload for a kernel plan: ``query``, ``key`` and ``programs`` rounded up to
    powers of two; every compiled-in size (``kp.static``) and every index-dividing param exact.

    >>> import einattn
    >>> from einattn.compiler import make_plan, make_kernel_plan
    >>> kp = make_kernel_plan(make_plan(einattn.load_spec("softmax")))
    >>> shape_bucket(kp, Workload.of(dict(b=2, h=3, m=77, n=1000, d=64, e=64)))
    {'query': 128, 'key': 1024, 'programs': 8, 'd': 64, 'e': 64}
    """
    sizes = workload.as_dict()
    out = {"query": pow2_ceil(sizes[kp.query]), "key": pow2_ceil(sizes[kp.key]),
           "programs": pow2_ceil(math.prod(sizes[g] for g in kp.grid))}
    out.update({i: sizes[i] for i in kp.static})
    for name in divisor_params(kp.cascade):
        v = (params or {}).get(name)
        out[f"param:{name}"] = v if v is None else (int(v) if float(v).is_integer() else float(v))
    return out


def divisor_params(cascade) -> tuple[str, ...]:
    """Params that divide an index in a read (``K[b, h // g, n, d]``): they change which rows a program reads."""
    out = {}
    for s in cascade.stmts:
        for e in s.expr.walk():
            if e.op is Op.READ:
                out.update({sub.div: None for sub in e.arg[1] if sub.div is not None})
    return tuple(out)


def machine_name() -> str:
    """The CPU's model name as the OS reports it (``/proc/cpuinfo``), for records to name the machine."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def einattn_version() -> str:
    try:
        return metadata.version("einattn")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class TuningKey:
    """The named fields a record is found by. ``fingerprint`` is the target's facts (a dict)."""
    spec: str                 # structural hash of the rewritten cascade
    bucket: tuple[tuple[str, int], ...]
    dtype: str
    target: str
    fingerprint: tuple[tuple[str, object], ...]

    @classmethod
    def make(cls, spec: str, bucket: dict, dtype: str, target: str, fingerprint: dict) -> "TuningKey":
        return cls(spec, tuple(sorted(bucket.items())), dtype, target, tuple(sorted(fingerprint.items())))

    def to_json(self) -> dict:
        return {"spec": self.spec, "bucket": dict(self.bucket), "dtype": self.dtype, "target": self.target,
                "fingerprint": dict(self.fingerprint)}

    @classmethod
    def from_json(cls, d: dict) -> "TuningKey":
        return cls.make(d["spec"], d["bucket"], d["dtype"], d["target"], d["fingerprint"])

    @property
    def id(self) -> str:
        """12 hex digits of the sha256 of the canonical JSON: what ``einattn cache show`` takes."""
        return hashlib.sha256(canonical(self.to_json()).encode()).hexdigest()[:12]

    @property
    def fingerprint_id(self) -> str:
        return hashlib.sha256(canonical(dict(self.fingerprint)).encode()).hexdigest()[:12]


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint_difference(record: dict, here: dict) -> list[str]:
    """The fields of a record's fingerprint that differ from this machine's, as ``name: a != b`` lines."""
    keys = sorted(set(record) | set(here))
    return [f"{k}: {record.get(k)!r} (record) != {here.get(k)!r} (here)" for k in keys if record.get(k) != here.get(k)]
