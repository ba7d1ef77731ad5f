"""Which parameters weight decay touches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def decay_mask(params) -> object:
    """Weight decay applies to matrices and kernels, not to biases, scales or norms."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)
