"""Hyperparameters as float32 arrays of the optimizer state: changing one never recompiles."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class TracedHyperparams(NamedTuple):
    hyperparams: dict[str, jax.Array]
    inner_state: Any


class Made(NamedTuple):
    """What a ``traced_hyperparams`` optimizer of a known shape was made of (its ``init.made``)."""

    shape: Hashable
    build: Callable[..., optax.GradientTransformation]
    values: dict[str, float]


def traced_hyperparams(build: Callable[..., optax.GradientTransformation], shape: Hashable | None = None,
                       **values: float) -> optax.GradientTransformation:
    """``build(**values)`` with ``values`` kept as float32 arrays of the state, read at every update.

    ``optax.inject_hyperparams`` does the same and also counts steps for hyperparameters that
    are schedules; ours are constants (the schedule is a multiplier of its own), and that
    counter is one more operation on the state at every step, which a small model feels.

    ``shape``: a key naming what ``build`` makes apart from the values (equal keys, the same
    transformations in the same order). The initial state is then made by one compiled call,
    shared by every optimizer of that shape, instead of an operation per leaf: a sweep makes
    hundreds of them. Compiling it is safe because ``update`` already builds with traced values.
    """

    def init(params) -> TracedHyperparams:
        if shape is None:
            hyperparams = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
            return TracedHyperparams(hyperparams, build(**hyperparams).init(params))
        return _compiled_init(shape, build)({k: np.float32(v) for k, v in values.items()}, params)

    def update(updates, state: TracedHyperparams, params=None):
        updates, inner = build(**state.hyperparams).update(updates, state.inner_state, params)
        return updates, TracedHyperparams(state.hyperparams, inner)

    if shape is not None:
        init.made = Made(shape, build, values)  # what ``init_population`` reads
    return optax.GradientTransformation(init, update)


def init_population(txs: list[optax.GradientTransformation], params: Any) -> TracedHyperparams | None:
    """The initial states of ``txs`` for one ``params``, stacked along a new leading axis on the host, by
    one compiled call (the one-optimizer init vmapped over the values); None unless every one was made
    by ``traced_hyperparams`` with one ``shape`` (and its init is then each one's, value for value)."""
    made = [getattr(tx.init, "made", None) for tx in txs]
    if not made or any(m is None or m.shape != made[0].shape for m in made):
        return None
    values = {k: np.asarray([m.values[k] for m in made], np.float32) for k in made[0].values}
    return jax.device_get(_compiled_init(made[0].shape, made[0].build, members=True)(values, params))


_INITS: dict[tuple[Hashable, bool], Callable] = {}


def _compiled_init(shape: Hashable, build: Callable[..., optax.GradientTransformation],
                   members: bool = False) -> Callable:
    """The initial state of the optimizers of ``shape``, compiled once, with the first one's ``build``
    (the others of that shape differ only in the values, which are its arguments). ``members``: the
    same init vmapped over the values (one row a member), the parameters shared."""
    if (shape, members) not in _INITS:

        def init(hyperparams: dict[str, Any], params: Any) -> TracedHyperparams:
            return TracedHyperparams(hyperparams, build(**hyperparams).init(params))

        _INITS[shape, members] = jax.jit(jax.vmap(init, in_axes=(0, None)) if members else init)
    return _INITS[shape, members]
