"""Model families, one a file. ``build_model`` picks one by ``cfg.name``."""

from __future__ import annotations

from flax import nnx

from pipeline.config import ConfigError, ModelConfig
from pipeline.models import cnn, mlp, transformer

FAMILIES = {"mlp": mlp.build, "cnn": cnn.build, "transformer": transformer.build}


def build_model(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int,
                seed: int) -> nnx.Module:
    """A freshly initialised model for inputs of ``feature_shape`` (one example)."""
    if cfg.name not in FAMILIES:
        raise ConfigError(f"unknown model.name '{cfg.name}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[cfg.name](cfg, feature_shape, out_features, nnx.Rngs(params=seed))


def check_dataset(cfg: ModelConfig, info) -> None:
    """Fail before building anything when the family cannot take the dataset ``info`` describes.

    Raises ConfigError naming the dataset, its feature shape and the shape the family expects.
    ``build_model`` repeats the shape check, but only this check knows the dataset's name,
    dtype and task.
    """
    if cfg.name == "cnn":
        cnn.check_input(cfg, info.feature_shape, dataset=info.name)
    elif cfg.name == "transformer":
        transformer.check_input(cfg, info.feature_shape, info.feature_dtype, info.task, dataset=info.name)
