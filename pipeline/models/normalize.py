"""Standardization as part of the model: the trained model takes features as they are stored.

Images are stored as uint8 and stay uint8 on the device; they become float here, inside the
compiled step: ``(x - mean) / std`` with per-channel statistics of shape (C,), broadcast over
(H, W, C). Integer input becomes the dtype of the inner model's parameters (bfloat16 when the
step computes in bfloat16), float input keeps its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Statistic(nnx.Variable):
    """A fixed statistic of the training data (not trained, not decayed)."""


def _param_dtype(module: nnx.Module) -> jnp.dtype:
    """The floating dtype of the module's first parameter, float32 when it has none."""
    for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.dtype(jnp.float32)


class Standardized(nnx.Module):
    """``inner((x - mean) / std)`` with the training split's mean and std (std 0 counts as 1).

    ``mean`` and ``std`` are per feature (shaped like a row) or per channel (shape (C,), images).
    """

    def __init__(self, inner: nnx.Module, mean: np.ndarray, std: np.ndarray):
        self.mean = Statistic(jnp.asarray(mean, jnp.float32))
        self.scale = Statistic(jnp.asarray(1.0 / np.where(std > 0, std, 1.0), jnp.float32))
        self.inner = inner

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else _param_dtype(self.inner)
        return self.inner(((x.astype(jnp.float32) - self.mean[...]) * self.scale[...]).astype(dtype))
