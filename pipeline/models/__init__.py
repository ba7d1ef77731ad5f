"""Model families, one a file. ``build_model`` picks one by ``cfg.name``."""

from __future__ import annotations

from flax import nnx

from pipeline.config import ConfigError, ModelConfig
from pipeline.models import mlp

FAMILIES = {"mlp": mlp.build}


def build_model(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int,
                seed: int) -> nnx.Module:
    """A freshly initialised model for inputs of ``feature_shape`` (one example)."""
    if cfg.name not in FAMILIES:
        raise ConfigError(f"unknown model.name '{cfg.name}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[cfg.name](cfg, feature_shape, out_features, nnx.Rngs(params=seed))
