"""What every tracker (``pipeline.track.trackers``) is built on.

A tracker receives every step's scalars, tagged ``SPLIT/METRIC`` (``train/loss``,
``test/accuracy``) plus ``train/learning_rate``, stepped by the step. A tracker that fails (a
missing extra, no server, a bad URI, a library error) raises one line, ``log=NAME: cause``; the
run's own records are the engine's and are never touched by a tracker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from pipeline.config import Config
from pipeline.errors import PipelineError, typed_line
from pipeline.hooks import Hook, RunInfo
from pipeline.track.learning_rate import LearningRate


class TrackerFailed(PipelineError):
    """A tracker's library failed: ``log=NAME: cause`` (the traceback is its ``__cause__``)."""


def need(module: str, extra: str) -> Any:
    """Import a tracker's library, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(f"log={extra} needs the '{extra}' extra: pip install 'pipeline[{extra}]'") from None


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer.learning_rate": 0.001, ...}``: the leaves of a config as in ``config.json``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


class Tracker(Hook):
    """What every tracker shares: the failure line, the learning rate, one ``write`` per step.

    A subclass sets ``name`` and implements ``start``, ``write`` and ``stop``; ``check`` runs when the
    tracker is made, before the run folder is (a missing extra or an unreachable server fails
    there, and leaves nothing behind).
    """

    name: ClassVar[str] = ""

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg
        self.run: RunInfo | None = None
        self.finished = False  # on_end came: the run ended normally
        self.last_step = 0
        self.guard(self.check)

    def guard(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run ``action``; any exception of the tracker's library becomes the one line."""
        try:
            return action(*args)
        except PipelineError:
            raise
        except Exception as exc:  # a library's own error, whatever its type: one line naming the tracker
            line = typed_line(exc)
            raise TrackerFailed(f"log={self.name}: {line[:400]}") from exc

    # -- what a subclass implements ----------------------------------------------------------------
    def check(self) -> None:
        """Before the run folder exists: the library imports, the store or server answers."""

    def start(self, run: RunInfo) -> None:
        raise NotImplementedError

    def write(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """After each event's writes."""

    def stop(self, finished: bool) -> None:
        """Last; ``finished`` when the run (or the trial) ended normally."""

    # -- the hook ------------------------------------------------------------------------------------
    def on_start(self, run: RunInfo) -> None:
        self.learning_rate = self.guard(LearningRate.of, run.config, run.total_steps)
        self.last_step = run.first_step
        self.guard(self.start, run)
        self.run = run

    def after_call(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        rates = self.learning_rate.at(np.asarray(steps))
        for i, step in enumerate(np.asarray(steps).tolist()):
            values = {f"train/{name}": float(series[i]) for name, series in metrics.items()}
            values["train/learning_rate"] = float(rates[i])
            self.guard(self.write, int(step), values)
            self.last_step = int(step)
        self.guard(self.flush)

    def on_eval(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        values = {f"{split}/{name}": float(value) for split, named in metrics.items() for name, value in named.items()}
        self.guard(self.write, int(step), values)
        self.guard(self.flush)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.finished = True

    def close(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            # A sweep's trials get no on_end: one that trained all its steps finished.
            done = self.finished or (run.trial is not None and self.last_step >= run.total_steps)
            self.guard(self.stop, done)
