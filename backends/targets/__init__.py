"""Hardware facts of the targets einattn compiles for (data, not literals in backends)."""
