"""Hyperparameters as float32 arrays of the optimizer state: changing one never recompiles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TracedHyperparams(NamedTuple):
    hyperparams: dict[str, jax.Array]
    inner_state: Any


def traced_hyperparams(build: Callable[..., optax.GradientTransformation],
                       **values: float) -> optax.GradientTransformation:
    """``build(**values)`` with ``values`` kept as float32 arrays of the state, read at every update.

    ``optax.inject_hyperparams`` does the same and also counts steps for hyperparameters that
    are schedules; ours are constants (the schedule is a multiplier of its own), and that
    counter is one more operation on the state at every step, which a small model feels.
    """

    def init(params) -> TracedHyperparams:
        hyperparams = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
        return TracedHyperparams(hyperparams, build(**hyperparams).init(params))

    def update(updates, state: TracedHyperparams, params=None):
        updates, inner = build(**state.hyperparams).update(updates, state.inner_state, params)
        return updates, TracedHyperparams(state.hyperparams, inner)

    return optax.GradientTransformation(init, update)
