"""Trackers as hooks: ``log=tensorboard,wandb,mlflow`` (Parquet is always on). Each works offline.

TensorBoard event files go to ``RUN_DIR/tensorboard/`` (tensorboardX's writer), W&B runs in
offline mode under ``RUN_DIR/wandb/``, MLflow into a local file store ``RUN_DIR/mlruns/``.
Each comes with an optional extra; a missing one is one line naming the extra to install.
Scalars are tagged ``SPLIT/METRIC`` (``train/loss``, ``test/accuracy``), stepped by the step.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from pipeline.config import tracker_names
from pipeline.errors import PipelineError
from pipeline.hooks import Hook, RunInfo


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(f"log={extra} needs the '{extra}' extra: pip install 'pipeline[{extra}]'") from None


class _Scalars(Hook):
    """What every tracker receives: scalars by tag and step."""

    def after_call(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        for name, values in metrics.items():
            for step, value in zip(steps, values):
                self.scalar(f"train/{name}", float(value), int(step))

    def on_eval(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        for split, values in metrics.items():
            for name, value in values.items():
                self.scalar(f"{split}/{name}", float(value), step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        raise NotImplementedError


class TensorBoard(_Scalars):
    def on_start(self, run: RunInfo) -> None:
        writer = _need("tensorboardX", "tensorboard").SummaryWriter
        self.writer = writer(logdir=str(run.run_dir / "tensorboard"), purge_step=run.first_step or None)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


class WandB(_Scalars):
    def on_start(self, run: RunInfo) -> None:
        wandb = _need("wandb", "wandb")
        self.run = wandb.init(mode="offline", dir=str(run.run_dir), name=run.run_dir.name,
                              project=run.experiment, config=run.config)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.run.log({tag: value}, step=step)

    def close(self) -> None:
        if hasattr(self, "run"):
            self.run.finish()


class MLflow(_Scalars):
    def on_start(self, run: RunInfo) -> None:
        self.mlflow = _need("mlflow", "mlflow")
        self.mlflow.set_tracking_uri((run.run_dir / "mlruns").resolve().as_uri())
        self.mlflow.set_experiment(run.experiment)
        self.mlflow.start_run(run_name=run.run_dir.name)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.mlflow.log_metric(tag.replace("/", "_"), value, step=step)

    def close(self) -> None:
        if hasattr(self, "mlflow"):
            self.mlflow.end_run()


def trackers(text: str) -> list[Hook]:
    return [{"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}[n]() for n in tracker_names(text)]
