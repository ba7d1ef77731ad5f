"""Multi-layer perceptron: flatten, hidden layers with an activation and dropout, linear head."""

from __future__ import annotations

import math

import jax
from flax import nnx

from pipeline.models.layers import ACTIVATIONS, dropout


class MLP(nnx.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int,
                 activation: str, *, rngs: nnx.Rngs):
        widths = (in_features, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.head = nnx.Linear(widths[-1], out_features, rngs=rngs)
        self.activation = activation

    def __call__(self, x_BxF: jax.Array, *, dropout_rate: jax.Array | float = 0.0,
                 key: jax.Array | None = None) -> jax.Array:
        h = x_BxF.reshape(x_BxF.shape[0], -1)  # images and vectors alike
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            h = act(layer(h))
            h = dropout(h, dropout_rate, None if key is None else jax.random.fold_in(key, i))
        return self.head(h)


def build(cfg, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> MLP:
    return MLP(math.prod(feature_shape), tuple(cfg.hidden), out_features, cfg.activation, rngs=rngs)
