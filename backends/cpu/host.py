"""The host CPU as a TVM LLVM target: detected once, described as plain data.

Detection asks LLVM (through TVM) for the host's CPU name and features, so the
kernels use the widest vector unit the machine has (``znver4``: AVX-512, 16 fp32
lanes). Importing TVM's compiler takes over a second, so the answer is kept in a
small JSON file keyed by ``/proc/cpuinfo``: a process that only loads cached
kernels never imports it. The fingerprint joins every fact that changes the
generated code and keys the CPU backend's build cache.

The cache sizes and the usable core count (:func:`read_cache_sizes`) come from
sysfs and the process's CPU affinity: they change no code, only which configs
fit and pay off (``CpuConfig.validate`` and ``CpuConfig.space``).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class HostCpu:
    """Attributes: ``mcpu`` (LLVM CPU name), ``triple``, ``vector_bits`` (widest
    fp32 vector register), ``has_bf16`` (AVX512_BF16 dot products)."""
    mcpu: str
    triple: str
    vector_bits: int
    has_bf16: bool

    @property
    def fp32_lanes(self) -> int:
        return self.vector_bits // 32

    def tvm_target(self) -> dict:
        """The dict form TVM 0.27 requires (``"llvm -mcpu=..."`` strings are rejected)."""
        return {"kind": "llvm", "mcpu": self.mcpu}

    @property
    def vector_registers(self) -> int:
        """Architectural vector registers: 32 with AVX-512 (and on AArch64), 16 with AVX2/SSE."""
        return 32 if self.vector_bits >= 512 or not self.triple.startswith(("x86_64", "i686", "i386")) else 16

    def fingerprint(self) -> str:
        return f"{self.triple}/{self.mcpu}/v{self.vector_bits}"


@dataclass(frozen=True, slots=True)
class CacheSizes:
    """Bytes of the L1 data cache and the L2 of one core, of the (shared) L3, and the cores
    this process may run on. The defaults are the fallback where sysfs says nothing."""
    l1d: int = 48 * 1024
    l2: int = 1024 * 1024
    l3: int = 0
    cores: int = 1


CACHE_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG") or 0) * scale


def read_cache_sizes(root: Path = CACHE_SYSFS) -> CacheSizes:
    """The host's cache sizes from ``root/index*/{level,type,size}`` (Linux sysfs), each one
    the default of :class:`CacheSizes` when unreadable, and ``len(os.sched_getaffinity(0))`` cores.

    >>> read_cache_sizes(Path("/nonexistent")).l2
    1048576
    """
    found: dict[str, int] = {}
    for d in sorted(Path(root).glob("index*")):
        try:
            level = (d / "level").read_text().strip()
            kind = (d / "type").read_text().strip()
            size = _parse_size((d / "size").read_text())
        except (OSError, ValueError):
            continue
        name = {"1": "l1d", "2": "l2", "3": "l3"}.get(level)
        if name and size > 0 and not (name == "l1d" and kind == "Instruction"):
            found[name] = size
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CacheSizes(**found, cores=max(cores, 1))


def cpuinfo_key() -> str:
    """A hash of what the OS says about the CPU (model and feature flags)."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if not line.strip():
                    break                  # the first processor is enough
    except OSError:
        text += platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ask_llvm() -> HostCpu:
    """Detect with LLVM (imports TVM)."""
    import tvm
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu() or "generic"
    triple = codegen.llvm_get_system_triple()
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    bits = int(codegen.llvm_get_vector_width(target) or 128)
    if bits >= 512 and not codegen.llvm_cpu_has_features(["avx512f"], target):
        bits = 256
    bf16 = bool(codegen.llvm_cpu_has_features(["avx512bf16"], target))
    return HostCpu(mcpu, triple, max(bits, 128), bf16)


_HOST: dict[str, HostCpu] = {}


def detect_host(cache_dir: Path | None = None) -> HostCpu:
    """The host CPU; remembered in ``cache_dir/host-<cpuinfo hash>.json`` when given."""
    key = cpuinfo_key()
    if key in _HOST:
        return _HOST[key]
    path = None if cache_dir is None else Path(cache_dir) / f"host-{key}.json"
    host = None
    if path is not None and path.exists():
        try:
            host = HostCpu(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            host = None                      # unreadable: detect again and rewrite it
    if host is None:
        host = ask_llvm()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(asdict(host), sort_keys=True))
                os.replace(tmp, path)
            except OSError:
                pass
    _HOST[key] = host
    return host
