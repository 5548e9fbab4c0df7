"""The loops of a compiled GPU kernel and what each issues, read from its machine code.

For CUDA, the SASS that ``cuobjdump -sass`` (bundled with Triton, beside its ptxas) prints for
the cubin; for ROCm, the AMDGCN text Triton writes. A loop is a backward branch and the code
from its target to the branch; for an attention kernel these are the key loops (a causal kernel
has two: the full tiles and the diagonal ones). Each loop reports how many instructions it
issues per iteration (NOPs excluded) and the ones that matter for attention: matrix-multiply
instructions, exponentials, asynchronous copies and tensor-memory (TMA) loads.

No GPU is needed: ``einattn compile ... --out`` puts these counts in ``report.json``, and tests
hold the zoo's kernels to recorded budgets (a static regression check of the kernels' size).

    >>> [l.instructions > 0 for l in sass_loops("        /*0010*/  FADD R1, R1, R2 ;\\n"
    ...                                             "        /*0020*/  @P0 BRA 0x10 ;\\n")]
    [True]
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# what each class counts: SASS opcode prefixes (CUDA), AMDGCN mnemonic prefixes (ROCm)
CUDA_CLASSES = {"mma": ("HGMMA", "HMMA", "UTCHMMA", "UTCQMMA"), "ex2": ("MUFU.EX2",),
                "async_copies": ("LDGSTS",), "tma_loads": ("UTMALDG",), "global_loads": ("LDG",),
                "shared_loads": ("LDS", "LDSM"), "barriers": ("BAR",)}
ROCM_CLASSES = {"mma": ("v_mfma", "v_wmma"), "ex2": ("v_exp_f32", "v_exp_f16"),
                "async_copies": ("buffer_load_dword_lds", "global_load_lds"), "tma_loads": (),
                "global_loads": ("global_load", "buffer_load"), "shared_loads": ("ds_read", "ds_load"),
                "barriers": ("s_barrier",)}


@dataclass
class Loop:
    start: int                     # address (CUDA) or line (ROCm) of the loop's first instruction
    end: int                       # of its backward branch
    instructions: int              # issued per iteration, NOPs excluded
    counts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "instructions": self.instructions, **self.counts}


def cuobjdump_path() -> Path:
    import triton
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def sass(cubin: bytes) -> str:
    """The SASS text of a cubin (``cuobjdump -sass``)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        p = subprocess.run([str(cuobjdump_path()), "-sass", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {(p.stderr or p.stdout).strip()[-300:]}")
    return p.stdout


_SASS = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_loops(text: str) -> list[Loop]:
    """The loops of SASS text, in address order (a nested loop is counted inside its parent too;
    a loop with two backward branches to one header is one loop)."""
    ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_SASS.match, text.splitlines()) if m]
    latch: dict[int, int] = {}
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            latch[start] = max(addr, latch.get(start, addr))
    return _loops(ins, latch, "NOP", CUDA_CLASSES, first=True)


def amdgcn_loops(text: str) -> list[Loop]:
    """The loops of AMDGCN text: a branch back to a label defined before it."""
    labels: dict[str, int] = {}
    ins: list[tuple[int, str, str]] = []
    for k, line in enumerate(text.splitlines()):
        s = line.split(";")[0].strip()
        if not s:
            continue
        if s.endswith(":"):
            labels[s[:-1]] = k                  # .LBB0_3: (directives do not end with a colon)
        elif not s.startswith(".") and re.match(r"[a-z]", s):
            op, _, rest = s.partition(" ")
            ins.append((k, op, rest.strip()))
    latch: dict[int, int] = {}         # loop header -> its last backward branch (a loop may have two)
    for k, op, rest in ins:
        if op.startswith("s_cbranch") or op == "s_branch":
            start = labels.get(rest)
            if start is not None and start < k:
                latch[start] = max(k, latch.get(start, k))
    return _loops(ins, latch, "s_nop", ROCM_CLASSES, first=False)


def _loops(ins: list, latch: dict, nop: str, classes: dict, first: bool) -> list[Loop]:
    """One Loop per header (a loop with two backward branches is counted to the last one);
    ``first``: the header itself is an instruction (an address), not a label's line.

    A branch back into the middle of a loop from code placed after it (the out-of-line retry of
    a TMA barrier wait) is no loop: of two ranges that overlap without nesting, the one that
    starts later is dropped. Such waits spin in loops of their own, reported like any other."""
    spans = sorted(latch.items())
    latch = {s: e for s, e in spans if not any(s2 < s <= e2 < e for s2, e2 in spans)}
    out = []
    for start, end in sorted(latch.items()):
        body = [o for j, o, _ in ins if (start <= j if first else start < j) and j <= end and o != nop]
        out.append(Loop(start, end, len(body), _classify(body, classes)))
    return out


def _classify(ops: list[str], classes: dict) -> dict:
    c = Counter()
    for o in ops:
        for name, prefixes in classes.items():
            if o.startswith(prefixes):
                c[name] += 1
    return {name: c[name] for name in classes}


def kernel_loops(ck) -> list[dict]:
    """The key loops of a ``CompiledKernel`` (``aot.compile_kernel``) as JSON-able dicts: the loops
    that issue matrix-multiply instructions (not the spin loops of barrier waits), or every loop
    where none does."""
    loops = sass_loops(sass(ck.files["cubin"])) if "cubin" in ck.files else amdgcn_loops(ck.files["amdgcn"])
    keyed = [lp for lp in loops if lp.counts.get("mma")]
    return [lp.to_json() for lp in (keyed or loops)]
