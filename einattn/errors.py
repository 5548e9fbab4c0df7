"""einattn's error hierarchy (defined in einattn.ir, the bottom layer)."""
from einattn.ir.errors import (BackendUnavailable, EinattnError, Loc, SpecError, TuningError,
                               UnsupportedError)

__all__ = ["BackendUnavailable", "EinattnError", "Loc", "SpecError", "TuningError", "UnsupportedError"]
