"""Which split and metric pick a member's best checkpoint, drive early stopping and rank trials.

One rule for a run and for every trial of a sweep: no decision reads the test split. Decisions
read the validation split, stored with the dataset or carved from train by ``data.validation_fraction``
with the dataset's ``data.validation_seed`` (every trial is judged on the same rows). Without one a
run selects nothing (its best is its final step) and what needs a selection (``patience``, an
explicit ``best_metric``, a sweep's ranking and rungs) is refused, unless ``selection.split=test``
asks for test explicitly: then the summaries flag the test metrics as optimistic. The metric is the
objective's best metric (``best_metric`` in the config overrides it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Config, ConfigError
from pipeline.data import DatasetInfo
from pipeline.data.budget import fits_on_device
from pipeline.objectives import Objective, best_metric

TEST_FLAG = "selection read the test split: the test metrics are optimistic"
NO_SELECTION = "no validation split: nothing was selected, the best is the final step"


@dataclass(frozen=True)
class Selection:
    split: str  # "val"; "test" (selection.split=test, flagged); "" (no validation: the last evaluation is the best)
    metric: str
    higher: bool

    def record(self) -> dict[str, Any]:
        """What a summary says about the selection: the split it read, flagged when that was test."""
        if not self.split:
            return {"split": "none", "metric": self.metric, "note": NO_SELECTION}
        if self.split == "test":
            return {"split": "test", "metric": self.metric, "flag": TEST_FLAG}
        return {"split": self.split, "metric": self.metric}

    def value(self, evals: dict[str, dict[str, float]]) -> float:
        """The selection metric of one evaluation (``{split: {metric: value}}``): what a search is told."""
        return evals[self.split][self.metric]


def carves_validation(cfg: Config, info: DatasetInfo) -> bool:
    """Whether a validation split is carved from train: the dataset stores none, the config asks for one,
    and the training split is held in memory (a streamed split is never read whole, so never carved)."""
    return ("validation" not in info.rows and cfg.data.validation_fraction > 0
            and fits_on_device(info, cfg.data.max_device_bytes))


def has_validation(cfg: Config, info: DatasetInfo) -> bool:
    return "validation" in info.rows or carves_validation(cfg, info)


def on_test(cfg: Config) -> bool:
    return cfg.selection.split == "test"


def needs_validation(cfg: Config, info: DatasetInfo, what: str) -> ConfigError:
    """The one line refusing ``what`` (a feature that selects) on a dataset without a validation split."""
    if cfg.data.validation_fraction > 0:  # asked for, but the training split is streamed
        how = (f"dataset '{cfg.data.name}' is streamed from disk (over data.max_device_bytes), so it is not "
               "carved: import it with a validation split")
    else:
        how = "set data.validation_fraction (e.g. 0.1) or import the dataset with one"
    return ConfigError(f"{what} needs a validation split: {how} (selection.split=test selects on test instead, "
                       "flagged as optimistic)")


def check_selection(cfg: Config, info: DatasetInfo) -> None:
    """Refuse, before anything is made, a run feature that needs a selection when there is nothing to
    select on: early stopping and an explicit ``best_metric``."""
    if has_validation(cfg, info) or on_test(cfg):
        return
    if cfg.patience > 0:
        raise needs_validation(cfg, info, "'patience'")
    if cfg.best_metric:
        raise needs_validation(cfg, info, "'best_metric'")


def check_ranking(cfg: Config, info: DatasetInfo) -> None:
    """A sweep ranks its trials (and stops them at rungs, and feeds a search): a decision, so refused
    without a validation split unless ``selection.split=test`` asks for test."""
    if not (has_validation(cfg, info) or on_test(cfg)):
        raise needs_validation(cfg, info, "a sweep ranks its trials (and --rungs stop them), which")


def selection(cfg: Config, info: DatasetInfo, objective: Objective, ranks: bool = False) -> Selection:
    """The selection of ``cfg`` on ``info``; ``ranks=True`` (a sweep's ranking) refuses to have none."""
    if ranks:
        check_ranking(cfg, info)
    metric = best_metric(cfg, objective)
    split = "test" if on_test(cfg) else "val" if has_validation(cfg, info) else ""
    return Selection(split, metric, objective.higher_is_better[metric])
