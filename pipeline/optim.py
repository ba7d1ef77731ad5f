"""Optax optimizers by name, with every numeric hyperparameter a traced value.

Learning rate, weight decay, momentum, Adam betas and the clipping norm are arrays in the
optimizer state (``TracedHyperparams``, ``optax.inject_hyperparams`` without its step
counter): changing them never recompiles and a sweep can vmap a population of them through
one compiled step. The schedule is a
multiplier in [0, 1] on the updates, so its shape is fixed by the config while the peak
learning rate stays traced; this equals Optax's own scheduled learning rate exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from pipeline.config import OptimizerConfig, traced_fields


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


def schedule_multiplier(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The schedule's shape as a multiplier of the (traced) peak learning rate."""
    warmup = min(cfg.warmup_steps, total_steps)
    if cfg.schedule == "constant":
        if warmup == 0:
            return lambda count: jnp.ones([], jnp.float32)
        return optax.linear_schedule(0.0, 1.0, warmup)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(1.0, max(total_steps, 1))
    if cfg.schedule == "warmup_cosine":
        if warmup == 0:  # no warm-up step at multiplier 0: exactly Optax's schedule with warmup_steps=0
            return optax.cosine_decay_schedule(1.0, max(total_steps, 1))
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1))
    raise ValueError(cfg.schedule)


def decay_mask(params) -> object:
    """Weight decay applies to matrices and kernels, not to biases, scales or norms."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int, grad_accum: int = 1) -> optax.GradientTransformation:
    """The optimizer of ``cfg``; with ``grad_accum > 1`` it updates once every that many steps."""
    tx = _injected(cfg, max(total_steps // grad_accum, 1))
    return optax.MultiSteps(tx, every_k_schedule=grad_accum) if grad_accum > 1 else tx


def _injected(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    multiplier = schedule_multiplier(cfg, total_steps)
    clip = cfg.clip_norm > 0
    # Switches, like clipping: a piece that would do nothing is left out of the program rather
    # than computed with a traced zero (ops per parameter per step that a small model feels).
    decay = cfg.weight_decay > 0
    scheduled = not (cfg.schedule == "constant" and cfg.warmup_steps == 0)

    def build(learning_rate, weight_decay, momentum, b1, b2, clip_norm, **_):
        parts = [optax.clip_by_global_norm(clip_norm)] if clip else []
        if cfg.name == "adamw":
            parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
        else:
            if decay:  # L2 coupled to the gradient, as torch.optim does for these optimizers.
                parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
            if cfg.name == "sgd":
                parts.append(optax.sgd(learning_rate))
            elif cfg.name == "momentum":
                parts.append(optax.sgd(learning_rate, momentum=momentum))
            elif cfg.name == "adam":
                parts.append(optax.adam(learning_rate, b1=b1, b2=b2))
            else:
                raise ValueError(cfg.name)
        if scheduled:
            parts.append(optax.scale_by_schedule(multiplier))
        return optax.chain(*parts)

    # Every field marked traced in OptimizerConfig becomes an array of the optimizer state.
    values = {key: getattr(cfg, key) for key in traced_fields(cfg)}
    values["clip_norm"] = cfg.clip_norm if clip else 1.0  # off: never read, and no division by zero
    return traced_hyperparams(build, **values)


def hyperparams(opt_state) -> dict[str, jax.Array]:
    """The traced hyperparameters inside an optimizer state made by ``make_optimizer``."""
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.inner_opt_state.hyperparams
    return opt_state.hyperparams
