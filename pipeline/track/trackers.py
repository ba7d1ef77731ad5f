"""Trackers as hooks: ``log=tensorboard,wandb,mlflow`` (Parquet is always on).

Each tracker is a module of its own (``tensorboard_tracker``, ``wandb_tracker``, ``mlflow_tracker``)
built on ``tracker_base.Tracker``; see docs/training.md (Trackers).
"""

from __future__ import annotations

from pipeline.config import Config, tracker_names
from pipeline.hooks import Hook
from pipeline.track.mlflow_tracker import MLflowTracker
from pipeline.track.tensorboard_tracker import TensorBoardTracker
from pipeline.track.wandb_tracker import WandbTracker

KINDS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MLflowTracker}


def trackers(log: str | Config) -> list[Hook]:
    """The trackers ``log=`` names. Given the whole config, each checks its library and store now,
    before anything is written (the MLflow URI is the config's ``mlflow_uri``)."""
    cfg = log if isinstance(log, Config) else None
    text = cfg.log if cfg is not None else str(log)
    return [KINDS[name](cfg) for name in tracker_names(text)]
