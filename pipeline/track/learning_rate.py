"""The learning rate a step trained with, computed on the host from the run's config.

The peak learning rate is a traced hyperparameter; the schedule is a multiplier of it
(``pipeline.optim.schedule_multiplier``), applied by Optax at the update's count. Update ``s``
(steps count from 1) has count ``s - 1``; with ``grad_accum = k`` the inner optimizer updates
once per ``k`` steps, over ``total_steps // k`` updates, so step ``s`` reads count ``(s - 1) // k``.
A search that changes the traced rate during training (PBT) is not seen here: this is the config's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import OptimizerConfig, from_dict


@dataclass
class LearningRate:
    peak: float
    every: int  # grad_accum
    multiplier: Any  # an Optax schedule of the update count, or None for a constant 1

    @classmethod
    def of(cls, config: dict[str, Any], total_steps: int) -> LearningRate:
        from pipeline.optim import schedule_multiplier

        optimizer = from_dict(OptimizerConfig, config["optimizer"])
        every = max(int(config.get("grad_accum", 1)), 1)
        multiplier = schedule_multiplier(optimizer, max(total_steps // every, 1))
        return cls(float(optimizer.learning_rate), every, multiplier)

    def at(self, steps: np.ndarray) -> np.ndarray:
        """The learning rate of each step in ``steps`` (float64, one per step)."""
        counts = (np.asarray(steps, np.int64) - 1) // self.every
        if self.multiplier is None:
            return np.full(counts.shape, self.peak)
        # The schedule is evaluated by Optax in float32, as inside the compiled step.
        scale = np.asarray(self.multiplier(np.asarray(counts, np.int32)), np.float32)
        return np.broadcast_to(np.float32(self.peak) * scale, counts.shape).astype(np.float64)
