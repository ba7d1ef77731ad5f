"""Checks of a model and an objective against a dataset, before anything is compiled."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.data.dataset import DatasetInfo
from pipeline.errors import PipelineError, typed_line
from pipeline.objectives import Objective, ObjectiveError, resolve
from pipeline.registry import family
from pipeline.registry import objective as registered_objective
from pipeline.train.state import StepSpec, TrainState

# What to do when an objective of one task meets a dataset of the other: (objective, dataset task) -> hint.
TASK_HINTS = {
    ("regression", "classification"): "import it again with --task regression if its labels are numbers, "
                                      "or train a classification experiment on it",
    ("classification", "regression"): "import it again with --task classification if its targets are class "
                                      "labels, or train a regression experiment on it",
}


def check_dataset(cfg: Config, info: DatasetInfo) -> None:
    """The objective fits the dataset's task, and the family's own input check (if it has one) passes.

    A classification experiment on a regression dataset (or the reverse) is one line saying both ways out.
    """
    try:
        resolve(cfg, info)
    except ObjectiveError as exc:
        hint = _task_hint(cfg.objective, info.task)
        if hint is None:
            raise
        raise ObjectiveError(f"{exc}: {hint}") from exc
    fam = family(cfg.model.name)
    if fam.check is not None:
        fam.check(cfg.model, info)


def _task_hint(objective: str, task: str) -> str | None:
    try:
        tasks = registered_objective(objective).tasks if objective else ()
    except PipelineError:  # an unknown objective: its own error says so
        return None
    return TASK_HINTS.get((tasks[0], task)) if len(tasks) == 1 else None


def expected_outputs(info: DatasetInfo, batch: int) -> tuple[int, ...]:
    """What the model must return for a batch: (B, classes), (B, targets) or (B, L, vocab)."""
    if info.task == "language_modeling":
        return (batch, *info.feature_shape, info.num_classes)
    return (batch, info.output_size)


def check_outputs(cfg: Config, spec: StepSpec, state: TrainState, info: DatasetInfo, batch: int = 2) -> None:
    """Trace the model abstractly (nothing is computed) on a batch of the dataset's features.

    A model that cannot take them, or that returns the wrong shape, is one line naming the
    family's file, the dataset and both shapes. The objective's evaluation is then checked on
    outputs of that shape (``check_evaluation``).
    """
    from pipeline.train.step import apply_model

    cfg_family = family(cfg.model.name)
    x = jax.ShapeDtypeStruct((batch, *info.feature_shape), np.dtype(info.feature_dtype))
    where = f"{cfg_family.origin}: model '{cfg_family.name}'"
    try:
        out, _ = jax.eval_shape(lambda p, r, x: apply_model(spec, p, r, x, train=True), state.params, state.rest, x)
    except PipelineError:
        raise
    except Exception as exc:  # the user's model code failed on these inputs
        raise ConfigError(f"{where} cannot take dataset '{info.name}' features of shape "
                          f"{tuple(info.feature_shape)} ({info.feature_dtype}): {typed_line(exc)}") from exc
    want = expected_outputs(info, batch)
    if spec.objective.tasks and tuple(out.shape) != want:
        raise ConfigError(f"{where} returns outputs of shape {tuple(out.shape)} for a batch of {batch} from dataset "
                          f"'{info.name}'; objective '{spec.objective.name}' expects {want}")
    check_evaluation(spec.objective, out, info)


def check_evaluation(objective: Objective, out: jax.ShapeDtypeStruct, info: DatasetInfo) -> None:
    """The objective's evaluation of one split, end to end, before any step is compiled.

    ``sums`` and ``combine`` are traced abstractly on outputs like ``out`` (nothing is computed),
    as ``eval_sums`` runs them; ``finalize`` then runs once on the host on stand-in totals of
    those statistics (ones, or zeros where ones fail), as an evaluation calls it. It must return
    every metric ``higher_is_better`` declares, the best metric among them: otherwise the first
    evaluation would find out after training has run. What fails is one line naming the
    objective's file and what is missing.
    """
    where = f"{objective.origin}: objective '{objective.name}'" if objective.origin else f"objective '{objective.name}'"
    batch = out.shape[0]
    x = jax.ShapeDtypeStruct((1, *out.shape), out.dtype)  # one evaluation batch of a split
    y = jax.ShapeDtypeStruct((1, batch, *info.label_shape), jax.dtypes.canonicalize_dtype(np.dtype(info.label_dtype)))
    mask = jax.ShapeDtypeStruct((1, batch), jnp.float32)

    def split_sums(x, y, mask):
        return objective.combine(jax.lax.map(lambda b: objective.sums(*b), (x, y, mask)))

    try:
        sums = jax.eval_shape(split_sums, x, y, mask)
    except PipelineError:
        raise
    except Exception as exc:  # the user's sums or combine failed on outputs of the model's shape
        raise ConfigError(f"{where}: its sums cannot take outputs of shape {tuple(out.shape)} and labels of shape "
                          f"{(batch, *info.label_shape)} ({info.label_dtype}): {typed_line(exc)}") from exc
    if not isinstance(sums, Mapping) or not sums:
        raise ConfigError(f"{where}: its sums return {type(sums).__name__}, not a dict of statistic -> value")
    shaped = [f"'{k}' of shape {tuple(v.shape)}" for k, v in sums.items() if int(np.prod(v.shape)) != 1]
    if shaped:
        raise ConfigError(f"{where}: its sums return {', '.join(shaped)} for a split; each must add up to one "
                          "number (sum over the batch)")
    metrics = _finalized(objective, list(sums), where)
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"{where}: its finalize returns {type(metrics).__name__}, not a dict of metric -> value")
    missing = [m for m in objective.higher_is_better if m not in metrics]
    if missing:
        named = ", ".join(f"'{m}'" + (" (its best metric)" if m == objective.best else "") for m in missing)
        raise ConfigError(f"{where}: its finalize returns no metric {named}, which higher_is_better declares; "
                          f"it returns {', '.join(map(str, metrics)) or 'nothing'}")
    for name, value in metrics.items():
        try:
            float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: its finalize returns '{name}' that is not one number "
                              f"({typed_line(exc)})") from exc


def _finalized(objective: Objective, names: list[str], where: str) -> Any:
    """``finalize`` of stand-in totals: ones, else zeros; numpy floats, so that 0/0 is nan, not an error."""
    failures = []
    for fill in (1.0, 0.0):
        totals = {k: np.float64(fill) for k in names}
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return objective.finalize(totals)
        except PipelineError:
            raise
        except Exception as exc:  # a fill value it cannot take: the other may do
            failures.append(exc)
    raise ConfigError(f"{where}: its finalize fails on a split's sums ({', '.join(names)}): "
                      f"{typed_line(failures[0])}") from failures[0]
