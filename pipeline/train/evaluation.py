"""Whole-split metrics from device sums, and the one bookkeeping of a member's progress.

A run and every member of a sweep population keep a ``Bookkeeping``: where it is, its last
and best evaluations, how many evaluations since the best (early stopping) and how it ended.
A run's checkpoints carry it in their meta; a sweep writes one per trial to ``trials.parquet``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import jax

from pipeline.errors import PipelineError, typed_line
from pipeline.objectives import Objective

# How a member ended: still "pending"/"running", or one of these.
FINISHED = ("done", "diverged", "stopped", "early_stopped", "pruned")


def finalize(objective: Objective, sums: dict) -> dict[str, float]:
    """Whole-split metrics from the device sums of ``eval_sums``. A user's ``finalize`` that fails on
    real totals (it passed the stand-ins ``checks.check_evaluation`` gave it) is one line naming it."""
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    try:
        return {k: float(v) for k, v in objective.finalize(host).items()}
    except PipelineError:
        raise
    except Exception as exc:
        where = f"{objective.origin}: " if objective.origin else ""
        raise PipelineError(f"{where}objective '{objective.name}': its finalize failed on the totals "
                            f"{host}: {typed_line(exc)}") from exc


@dataclass
class Bookkeeping:
    """What the engine remembers about one member, across a resume."""

    status: str = "pending"  # pending | running | done | diverged | stopped | early_stopped | pruned
    steps: int = 0  # updates in the member's state
    wall_s: float = 0.0
    stopped_at: int | None = None  # the step of divergence, of early stopping or of the rung that stopped it
    last_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    best_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    best_value: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0

    @property
    def stopped_early(self) -> bool:
        return self.status == "early_stopped"

    def observe(self, step: int, evals: dict[str, dict[str, float]], split: str, metric: str, higher: bool) -> bool:
        """Record one evaluation of every split; True when ``split/metric`` is the best so far.

        ``split=""`` (nothing to select on: no validation split) makes every evaluation the best, so
        the best is the last one, and ``best_value`` stays None: nothing was compared.
        """
        self.last_eval = {**self.last_eval, **evals}
        if not split:
            self.best_step, self.best_eval, self.evals_since_best = step, evals, 0
            return True
        value = evals[split][metric]
        if math.isnan(value):
            better = False
        elif self.best_value is None:
            better = True
        else:
            better = value > self.best_value if higher else value < self.best_value
        if better:
            self.best_value, self.best_step, self.best_eval, self.evals_since_best = value, step, evals, 0
        else:
            self.evals_since_best += 1
        return better

    def finish(self, status: str, at: int | None = None) -> None:
        self.status, self.stopped_at = status, at

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Bookkeeping:
        """From ``to_json``, or from the meta of a run checkpoint written before there was one bookkeeping
        (``step``, ``stopped_early``, ``best_step`` 0 before any evaluation)."""
        known = {k: data[k] for k in asdict(cls()) if k in data}
        if "steps" not in data and "step" in data:
            known["steps"] = int(data["step"])
        if "status" not in data:
            known["status"] = "early_stopped" if data.get("stopped_early") else "running"
            if known.get("best_value") is None:
                known["best_step"] = None
        return cls(**known)
