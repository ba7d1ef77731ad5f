"""Hooks: code of yours that the loop calls on the host between compiled calls, never inside them.

A hook subclasses ``Hook`` and overrides what it needs. They cost nothing per step: the loop
calls them with what it already has on the host (the train metrics of a call are the ones it
read back anyway). Pass them to ``pipeline.fit(..., hooks=[...])`` or return them from an
experiment file's ``hooks()``. Trackers (``log=tensorboard,wandb,mlflow``) are hooks too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunInfo:
    run_dir: Path
    experiment: str
    config: dict[str, Any]  # the resolved config as in config.json
    total_steps: int
    first_step: int  # > 0 when the run resumed


class Hook:
    def on_start(self, run: RunInfo) -> None:
        """Before the first call (after a resume has restored the state)."""

    def after_call(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        """The train metrics of one compiled call: ``steps`` (K,) and each metric (K,), on the host."""

    def on_eval(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        """An evaluation: ``{split: {metric: value}}`` (``val`` when there is one, ``test``)."""

    def on_checkpoint(self, step: int, best: bool) -> None:
        """A checkpoint was handed to Orbax (written asynchronously)."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """After ``summary.json`` is written (also after early stopping; not after a crash)."""

    def close(self) -> None:
        """Always called last, also when the run fails or is interrupted."""


class Hooks(Hook):
    """Several hooks called in order."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def on_start(self, run: RunInfo) -> None:
        for h in self.hooks:
            h.on_start(run)

    def after_call(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        for h in self.hooks:
            h.after_call(steps, metrics)

    def on_eval(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        for h in self.hooks:
            h.on_eval(step, metrics)

    def on_checkpoint(self, step: int, best: bool) -> None:
        for h in self.hooks:
            h.on_checkpoint(step, best)

    def on_end(self, summary: dict[str, Any]) -> None:
        for h in self.hooks:
            h.on_end(summary)

    def close(self) -> None:
        for h in self.hooks:
            h.close()
