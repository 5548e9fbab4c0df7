"""The torch executors as backends: ``reference`` (float64 oracle) and ``streaming``."""
from __future__ import annotations

import torch

from einattn.compiler import check_streamable

from ..base import Target, check_config, complete_params
from .reference import run_reference
from .streaming import run_streaming


def _compute_dtype(inputs: dict) -> torch.dtype:
    dts = {t.dtype for t in inputs.values()}
    return torch.float64 if dts == {torch.float64} else torch.float32


class ReferenceBackend:
    """Materialises every statement in float64 (whatever the input dtype)."""
    name = "reference"
    config_keys = ()

    def supports(self, target: Target) -> bool:
        return target.kind == "reference"

    def prepare(self, plan, target: Target, config: dict, **options):
        check_config(self.name, config, {})
        return plan.original

    def launch(self, artifact, inputs, sizes, params):
        return run_reference(artifact, inputs, sizes, params, torch.float64)


class StreamingBackend:
    """Runs the rewritten plan key tile by key tile (config: BLOCK_N, default 64).

    Computes in float64 for float64 inputs, else float32.
    """
    name = "streaming"
    config_keys = ("BLOCK_N",)

    def supports(self, target: Target) -> bool:
        return target.kind == "streaming"

    def prepare(self, plan, target: Target, config: dict, **options):
        check_streamable(plan)
        cfg = {"BLOCK_N": 64, **check_config(self.name, config, {"BLOCK_N": int})}
        return plan, cfg["BLOCK_N"]

    # tunable: the key tile (the autotuner's tests tune this backend: no compiler involved)
    def space(self, plan, target: Target, workload) -> list[dict]:
        """BLOCK_N in {64, 16, 32, 128, 256}, the default first, none past the key length's power of two."""
        n = workload.size(plan.cascade.key, 64)
        return [{"BLOCK_N": b} for b in (64, 16, 32, 128, 256) if b == 64 or b < 2 * n]

    def default_config(self, plan, target: Target, workload) -> dict:
        return {"BLOCK_N": 64}

    def fingerprint(self, target: Target) -> dict:
        return {"backend": "streaming", "torch": torch.__version__.split("+")[0]}

    def launch(self, artifact, inputs, sizes, params):
        plan, block_n = artifact
        params = complete_params(plan.cascade, sizes, params)
        return run_streaming(plan, inputs, sizes, params, block_n, _compute_dtype(inputs))
