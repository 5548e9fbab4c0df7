"""Search strategies behind one ask/tell interface.

``ask(n)`` proposes up to ``n`` configs not yet proposed (an empty list: done);
``tell(outcomes)`` reports how they did. :class:`Exhaustive` walks the whole
(pruned) space in its order, default first. :class:`ModelGuided` asks optuna's TPE
sampler (seeded, so a run repeats) for one categorical choice per config key; a
combination outside the pruned space is told as pruned without being measured, a
repeat is skipped. ``create(kind)`` makes one by name; ``choose(space, effort)``
picks by the space's size and the effort.
"""
from __future__ import annotations

from typing import Protocol

from einattn.ir import TuningError

from .measure import Outcome

# effort -> (largest space searched exhaustively, candidates measured at most, wall budget in s)
EFFORT = {"quick": (8, 10, 30.0), "full": (64, 64, 1800.0)}


def config_id(config: dict) -> tuple:
    return tuple(sorted(config.items()))


class Strategy(Protocol):
    name: str

    def ask(self, n: int) -> list[dict]: ...
    def tell(self, outcomes: list[Outcome]) -> None: ...


class Exhaustive:
    """Every candidate of the space in order (the default first), up to ``limit``."""
    name = "exhaustive"

    def __init__(self, space: list[dict], limit: int | None = None):
        self.todo = list(space)[:limit]

    def ask(self, n: int) -> list[dict]:
        out, self.todo = self.todo[:n], self.todo[n:]
        return out

    def tell(self, outcomes: list[Outcome]) -> None:
        pass


class ModelGuided:
    """optuna's TPE over one categorical per config key, restricted to the pruned space.

    The default is measured first (TPE's prior sees it); then up to ``limit`` configs in all.
    Scales as O(limit) measurements whatever the space's size; each ask costs TPE's model fit,
    milliseconds for tens of trials.
    """
    name = "optuna-tpe"

    def __init__(self, space: list[dict], limit: int, seed: int = 0):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.valid = {config_id(c): c for c in space}
        self.keys = sorted({k for c in space for k in c})
        self.choices = {k: sorted({c[k] for c in space if k in c}) for k in self.keys}
        self.study = optuna.create_study(direction="minimize",
                                         sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
        self.limit, self.asked, self.pending = limit, {}, {}
        if space:
            self.study.enqueue_trial(dict(space[0]))     # the default first: the baseline every tune reports

    def _suggest(self) -> dict | None:
        for _ in range(50):
            trial = self.study.ask()
            cfg = {k: trial.suggest_categorical(k, self.choices[k]) for k in self.keys}
            cid = config_id(cfg)
            if cid in self.valid and cid not in self.asked:
                self.pending[cid] = trial
                return self.valid[cid]
            # outside the pruned space, or already measured: costs no measurement
            self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
        return None

    def ask(self, n: int) -> list[dict]:
        out = []
        while len(out) < n and len(self.asked) < min(self.limit, len(self.valid)):
            cfg = self._suggest()
            if cfg is None:
                break
            self.asked[config_id(cfg)] = cfg
            out.append(cfg)
        return out

    def tell(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            trial = self.pending.pop(config_id(o.config), None)
            if trial is None:
                continue
            if o.status == "ok" and o.ms is not None:
                self.study.tell(trial, o.ms)
            else:
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)


def create(kind: str, space: list[dict], limit: int, seed: int = 0) -> Strategy:
    """A strategy by name: ``exhaustive`` or ``optuna``."""
    if kind == "exhaustive":
        return Exhaustive(space, limit)
    if kind in ("optuna", "optuna-tpe", "model"):
        try:
            return ModelGuided(space, limit, seed)
        except ModuleNotFoundError as e:
            raise TuningError(f"the model-guided search needs optuna ({e}); install it with "
                              f"`pip install optuna`, or use the exhaustive strategy") from None
    raise TuningError(f"unknown search strategy {kind!r}; expected 'exhaustive' or 'optuna'")


def choose(space: list[dict], effort: str) -> tuple[str, int]:
    """(strategy, candidate limit) for an effort: exhaustive while the space is small, else optuna."""
    small, limit, _ = EFFORT[effort]
    return ("exhaustive", len(space)) if len(space) <= small else ("optuna", limit)

