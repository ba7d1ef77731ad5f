"""Multi-layer perceptron: flatten, hidden layers with an activation and dropout, linear head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
from flax import nnx

from pipeline.config import ConfigError, ModelConfig, traced
from pipeline.models.layers import ACTIVATIONS, Dropout
from pipeline.registry import register_model


@dataclass(frozen=True)
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"  # sigmoid | tanh | relu | gelu
    dropout: float = traced(0.0, switch=True)

    def validate(self) -> None:
        check_common(self)
        if any(width < 1 for width in self.hidden):
            raise ConfigError(f"bad value for 'model.hidden': {','.join(map(str, self.hidden))}: "
                              "every width must be at least 1")


def check_common(cfg) -> None:
    """The checks every built-in family shares: its activation and dropout rate."""
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"bad value for 'model.activation': {cfg.activation!r}; choose one of "
                          f"{', '.join(ACTIVATIONS)}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"bad value for 'model.dropout': {cfg.dropout} must be in [0, 1)")


class MLP(nnx.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int,
                 activation: str, dropout: float = 0.0, *, rngs: nnx.Rngs):
        widths = (in_features, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.drops = nnx.List([Dropout(dropout, rngs=rngs) for _ in hidden])
        self.head = nnx.Linear(widths[-1], out_features, rngs=rngs)
        self.activation = activation

    def __call__(self, x_BxF: jax.Array) -> jax.Array:
        h = x_BxF.reshape(x_BxF.shape[0], -1)  # images and vectors alike
        act = ACTIVATIONS[self.activation]
        for layer, drop in zip(self.layers, self.drops):
            h = drop(act(layer(h)))
        return self.head(h)


def build(cfg: MLPConfig, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> MLP:
    return MLP(math.prod(feature_shape), tuple(cfg.hidden), out_features, cfg.activation, cfg.dropout, rngs=rngs)


register_model("mlp", MLPConfig, build)
