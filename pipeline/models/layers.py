"""Small pieces shared by model families, and open to users' models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
}


class Hyperparameter(nnx.Variable):
    """A traced hyperparameter kept in the model's state: no gradient, no weight decay, no optimizer slot.

    Because it is state, not a Python attribute, models that differ only in its value share
    one compiled program, and a sweep's population holds each member's own value.
    """


class Dropout(nnx.Module):
    """``nnx.Dropout`` with a traced rate: sweeping ``rate`` neither recompiles nor splits a population.

    Train and eval mode work as for ``nnx.Dropout`` (``model.train()`` / ``model.eval()``
    set ``deterministic``). A rate of exactly 0 is a switch: no mask is drawn at all.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        self.rate = Hyperparameter(jnp.asarray(rate, jnp.float32))
        self.active = float(rate) > 0.0
        self.deterministic = deterministic
        self.rngs = rngs["dropout"].fork() if self.active else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.active or self.deterministic:
            return x
        keep = 1.0 - self.rate[...]
        mask = jax.random.uniform(self.rngs(), x.shape) < keep
        return jnp.where(mask, x / keep, 0.0).astype(x.dtype)
