"""Which split and metric pick a member's best checkpoint, drive early stopping and rank trials.

One rule for a run and for every trial of a sweep: the validation split when the dataset has
one or the config carves one from train (``data.validation_fraction``), else test; the metric is
the objective's best metric (``best_metric`` in the config overrides it).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Config
from pipeline.data import DatasetInfo
from pipeline.objectives import Objective, best_metric


@dataclass(frozen=True)
class Selection:
    split: str
    metric: str
    higher: bool


def has_validation(cfg: Config, info: DatasetInfo) -> bool:
    return "validation" in info.rows or cfg.data.validation_fraction > 0


def selection(cfg: Config, info: DatasetInfo, objective: Objective) -> Selection:
    metric = best_metric(cfg, objective)
    return Selection("val" if has_validation(cfg, info) else "test", metric, objective.higher_is_better[metric])
