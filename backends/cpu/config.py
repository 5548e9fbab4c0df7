"""The CPU kernel's tunables and their hard constraints."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from einattn.ir import UnsupportedError


@dataclass(frozen=True, slots=True)
class CpuConfig:
    """Tunables of the CPU kernel (all positive ints; see the template's header).

    ``BLOCK_M`` query rows per task, ``BLOCK_N`` keys per streamed tile,
    ``SCORE_RJ`` x ``SCORE_RI`` the keys x queries of one score register tile,
    ``PV_RM`` x ``PV_E`` the query rows x value columns of one P.V register tile.
    The defaults keep 16 AVX-512 accumulators per register tile.
    """
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    SCORE_RJ: int = 4
    SCORE_RI: int = 64
    PV_RM: int = 4
    PV_E: int = 64

    @staticmethod
    def keys() -> dict[str, type]:
        return {f.name: int for f in dataclasses.fields(CpuConfig)}

    def check(self, vec: int) -> None:
        """Hard constraints, with what to change."""
        rules = [
            (self.SCORE_RI % vec == 0, f"SCORE_RI={self.SCORE_RI} must be a multiple of the vector width {vec}"),
            (self.BLOCK_M % self.SCORE_RI == 0, f"BLOCK_M={self.BLOCK_M} must be a multiple of SCORE_RI={self.SCORE_RI}"),
            (self.BLOCK_N % self.SCORE_RJ == 0, f"BLOCK_N={self.BLOCK_N} must be a multiple of SCORE_RJ={self.SCORE_RJ}"),
            (self.BLOCK_M % self.PV_RM == 0, f"BLOCK_M={self.BLOCK_M} must be a multiple of PV_RM={self.PV_RM}"),
            (self.BLOCK_M <= 1024 and self.BLOCK_N <= 1024, "BLOCK_M and BLOCK_N must be <= 1024"),
        ]
        for ok, why in rules:
            if not ok:
                raise UnsupportedError(f"CPU config {dataclasses.asdict(self)}: {why}")
