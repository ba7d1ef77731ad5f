"""Small pieces shared by model families."""

from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
}


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout whose ``rate`` may be a traced value (so sweeps can vmap over it).

    ``key=None`` means evaluation, and a literal rate of 0 means no dropout in this program:
    the input passes through unchanged and no mask is drawn.
    """
    if key is None or (isinstance(rate, (int, float)) and rate == 0):
        return x
    keep = 1.0 - rate
    mask = jax.random.uniform(key, x.shape) < keep
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)
