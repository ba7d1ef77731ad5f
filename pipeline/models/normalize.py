"""Standardization as part of the model: the trained model takes features as they are stored."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Statistic(nnx.Variable):
    """A fixed statistic of the training data (not trained, not decayed)."""


class Standardized(nnx.Module):
    """``inner((x - mean) / std)`` with the training split's per-feature mean and std (std 0 counts as 1)."""

    def __init__(self, inner: nnx.Module, mean: np.ndarray, std: np.ndarray):
        self.mean = Statistic(jnp.asarray(mean, jnp.float32))
        self.scale = Statistic(jnp.asarray(1.0 / np.where(std > 0, std, 1.0), jnp.float32))
        self.inner = inner

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.inner(((x - self.mean[...]) * self.scale[...]).astype(x.dtype))
