"""Evaluation splits and the bookkeeping of the best evaluation so far."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import jax

from pipeline.objectives import Objective


def finalize(objective: Objective, sums: dict) -> dict[str, float]:
    """Whole-split metrics from the device sums of ``eval_sums``."""
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    return {k: float(v) for k, v in objective.finalize(host).items()}


@dataclass
class Bookkeeping:
    """What the loop must remember across a resume: saved in every checkpoint's meta."""

    step: int = 0
    best_value: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    stopped_early: bool = False
    wall_s: float = 0.0
    last_eval: dict[str, dict[str, float]] = field(default_factory=dict)

    def observe(self, step: int, value: float, higher_is_better: bool) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if math.isnan(value):
            improved = False
        elif self.best_value is None:
            improved = True
        else:
            improved = value > self.best_value if higher_is_better else value < self.best_value
        if improved:
            self.best_value, self.best_step, self.evals_since_best = value, step, 0
        else:
            self.evals_since_best += 1
        return improved

    def to_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict) -> Bookkeeping:
        return cls(**{k: meta[k] for k in asdict(cls()) if k in meta})
