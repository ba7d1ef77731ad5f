"""Model families, one a file, each registered once (``pipeline.register_model``).

A model is a Flax NNX module that follows ``Model``: called on a batch of features, it
returns the batch of outputs the objective scores. Randomness (dropout) comes from the
``nnx.Rngs`` it was built with, and ``model.train()`` / ``model.eval()`` switch it between
training and evaluation behaviour (``nnx.Dropout``, ``nnx.BatchNorm``), as usual in NNX.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax
from flax import nnx

from pipeline.config import ModelConfig
from pipeline.models import cnn, mlp, resnet, transformer, vit  # noqa: F401 - the built-in families register on import
from pipeline.models.cnn import CNNConfig
from pipeline.models.layers import Dropout, Hyperparameter
from pipeline.models.mlp import MLPConfig
from pipeline.models.resnet import ResNetConfig
from pipeline.models.transformer import TransformerConfig
from pipeline.models.vit import ViTConfig
from pipeline.registry import family

__all__ = ["CNNConfig", "Dropout", "Hyperparameter", "MLPConfig", "Model", "ModelBuilder", "ResNetConfig",
           "TransformerConfig", "ViTConfig", "build_model", "model_rngs"]


@runtime_checkable
class Model(Protocol):
    """The call every model makes: features ``(B, *feature_shape)`` in, outputs out.

    Classification and regression: ``(B, out_features)``; language modelling: ``(B, L, vocab)``.
    The pipeline calls it inside ``jax.jit`` (train mode for training steps, eval mode for
    evaluation), with the features in the compute dtype (``precision``).
    """

    def __call__(self, x: jax.Array) -> jax.Array: ...


class ModelBuilder(Protocol):
    """``build(cfg, feature_shape, out_features, rngs) -> Model``: what ``register_model`` takes."""

    def __call__(self, cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int,
                 rngs: nnx.Rngs) -> Model: ...


def model_rngs(seed: int) -> nnx.Rngs:
    """Streams for initialisation (``params``) and dropout (``dropout``), and a ``default`` for the rest."""
    key = jax.random.key(seed)
    return nnx.Rngs(jax.random.fold_in(key, 2), params=seed, dropout=jax.random.fold_in(key, 1))


def build_model(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int, seed: int) -> nnx.Module:
    """A freshly initialised model of family ``cfg.name`` for inputs of ``feature_shape`` (one example)."""
    return family(cfg.name).build(cfg, tuple(feature_shape), out_features, model_rngs(seed))
