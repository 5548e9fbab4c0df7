"""Tuning records as text: the candidate table and one-line summaries (``einattn tune``, ``einattn cache``)."""
from __future__ import annotations

from tabulate import tabulate

from .database import Record


def config_text(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


def candidate_table(rec: Record, limit: int | None = None) -> str:
    """Every candidate: config, ms, GFLOP/s, status (and why), fastest first, the winner marked."""
    rows = sorted(rec.candidates, key=lambda c: (c.get("status") != "ok", c.get("ms") or float("inf")))
    time = "ms" if rec.measured else "ms (model)"
    table = []
    for c in rows[:limit]:
        mark = "*" if c["config"] == rec.winner else ("default" if c["config"] == rec.default else "")
        why = c["status"] + (f": {c['reason'][:70]}" if c.get("reason") and c["status"] != "ok" else "") \
            + (" (measured again)" if c.get("again") else "")
        table.append([mark, config_text(c["config"]), _num(c.get("ms")), _num(c.get("gflops")), why])
    return tabulate(table, headers=["", "config", time, "GFLOP/s", "status"], tablefmt="simple")


def summary(rec: Record) -> str:
    how = "measured" if rec.measured else f"ranked by the model {rec.model} (not measured: no such GPU here)"
    sp = rec.speedup
    vs = f", {sp:.2f}x the default ({_num(rec.default_ms)} ms)" if sp else ""
    if rec.measured:
        again = sum(1 for c in rec.candidates if c.get("again") and c["config"] != rec.default)
        how += f" (the best {again} measured again beside the default)"
    return (f"winner: {config_text(rec.winner)}: {_num(rec.ms)} ms{vs}; {how}; effort {rec.effort}, "
            f"{rec.strategy}, {len(rec.candidates)} candidates in {rec.wall_s:.1f} s")


def list_table(records: list[Record], source: str) -> str:
    rows = [[r.id, r.spec_name, r.key.target, _bucket(r.key.to_json()["bucket"]), r.key.dtype,
             config_text(r.winner), _num(r.ms), "yes" if r.measured else "model", source] for r in records]
    return tabulate(rows, headers=["key", "spec", "target", "bucket", "dtype", "winner", "ms", "measured", "from"],
                    tablefmt="simple")


def _bucket(b: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in b.items())


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"
