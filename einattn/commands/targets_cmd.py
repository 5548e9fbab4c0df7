"""einattn targets: the GPU targets einattn knows (hardware data) and what this host has."""
from __future__ import annotations

import json

from einattn.autotune.key import machine_name


def add(sub):
    p = sub.add_parser("targets", help="list GPU hardware targets and the detected host")
    p.add_argument("--json", action="store_true", help="print JSON (with each number's source)")
    p.set_defaults(run=run)


def detect_host() -> dict:
    import torch
    gpu = None
    if torch.cuda.is_available():
        kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        props = torch.cuda.get_device_properties(0)
        arch = getattr(props, "gcnArchName", None) or f"sm_{props.major}{props.minor}"
        gpu = {"kind": kind, "name": props.name, "arch": arch.split(":")[0], "count": torch.cuda.device_count()}
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"cpu": machine_name(), "gpu": gpu, "triton": triton_version,
            "run_hint": None if gpu else "no CUDA/ROCm device visible: GPU targets compile ahead of time; "
                                         "run them with interpret=True or EINATTN_INTERPRET=1"}


def run(args) -> int:
    from einattn.backends.triton.hardware import all_targets
    targets = all_targets()
    host = detect_host()
    if args.json:
        print(json.dumps({"targets": [t.to_json() for t in targets], "host": host}, indent=2, default=str))
        return 0
    print(f"{'target':16s} {'gpu':7s} {'SMs/CUs':>7s} {'warp':>4s} {'smem/blk':>9s} {'smem/SM':>8s} "
          f"{'regs/SM':>8s} {'fp16 TFLOP/s':>12s} {'TB/s':>5s}")
    for t in targets:
        print(f"{t.kind + ':' + t.arch:16s} {t.name:7s} {t.sms:7d} {t.warp_size:4d} {t.shared_memory_per_block // 1024:7d}KB "
              f"{t.shared_memory_per_sm // 1024:6d}KB {t.registers_per_sm:8d} {t.peak_flops_fp16 / 1e12:12.1f} "
              f"{t.memory_bandwidth / 1e12:5.2f}")
    print(f"\nhost: {host['cpu']}; triton {host['triton'] or 'not installed'}")
    if host["gpu"]:
        g = host["gpu"]
        print(f"device: {g['count']} x {g['name']} ({g['kind']}:{g['arch']})")
    else:
        print(f"device: none ({host['run_hint']})")
    print("sources: einattn targets --json (per number)")
    return 0
