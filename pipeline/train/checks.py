"""Checks of a model and an objective against a dataset, before anything is compiled."""

from __future__ import annotations

import jax
import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.data.dataset import DatasetInfo
from pipeline.errors import PipelineError
from pipeline.objectives import resolve
from pipeline.registry import family
from pipeline.train.state import StepSpec, TrainState


def check_dataset(cfg: Config, info: DatasetInfo) -> None:
    """The objective fits the dataset's task, and the family's own input check (if it has one) passes."""
    resolve(cfg, info)
    fam = family(cfg.model.name)
    if fam.check is not None:
        fam.check(cfg.model, info)


def expected_outputs(info: DatasetInfo, batch: int) -> tuple[int, ...]:
    """What the model must return for a batch: (B, classes), (B, targets) or (B, L, vocab)."""
    if info.task == "language_modeling":
        return (batch, *info.feature_shape, info.num_classes)
    return (batch, info.output_size)


def check_outputs(cfg: Config, spec: StepSpec, state: TrainState, info: DatasetInfo, batch: int = 2) -> None:
    """Trace the model abstractly (nothing is computed) on a batch of the dataset's features.

    A model that cannot take them, or that returns the wrong shape, is one line naming the
    family's file, the dataset and both shapes.
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
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{where} cannot take dataset '{info.name}' features of shape "
                          f"{tuple(info.feature_shape)} ({info.feature_dtype}): {type(exc).__name__}: {text}") from exc
    want = expected_outputs(info, batch)
    if spec.objective.tasks and tuple(out.shape) != want:
        raise ConfigError(f"{where} returns outputs of shape {tuple(out.shape)} for a batch of {batch} from dataset "
                          f"'{info.name}'; objective '{spec.objective.name}' expects {want}")
