"""The optimizer of a config: its registered factory, with every numeric hyperparameter a traced value.

Every field marked traced in ``OptimizerConfig`` (learning rate, weight decay, momentum, betas,
clipping norm) is an array of the optimizer state (``traced.py``): changing it never recompiles,
and a sweep may vmap a population of them through one compiled step. The factory reads the ones
its registration names; the schedule is a multiplier of its own (``schedules.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from pipeline.config import ConfigError, OptimizerConfig, traced_fields
from pipeline.errors import PipelineError, typed_line
from pipeline.optim.mask import decay_mask
from pipeline.optim.schedules import schedule_multiplier
from pipeline.optim.traced import traced_hyperparams
from pipeline.registry import OptimizerEntry, RegistryError, optimizer


def make_optimizer(cfg: OptimizerConfig, total_steps: int, grad_accum: int = 1) -> optax.GradientTransformation:
    """The optimizer of ``cfg``; with ``grad_accum > 1`` it updates once every that many steps."""
    tx = _injected(cfg, max(total_steps // grad_accum, 1))
    return optax.MultiSteps(tx, every_k_schedule=grad_accum) if grad_accum > 1 else tx


def _injected(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    entry = optimizer(cfg.name)
    multiplier = schedule_multiplier(cfg, total_steps)
    # Every field marked traced in OptimizerConfig becomes an array of the optimizer state, read or
    # not: trials that differ only in them share one compiled program (a sweep's population).
    values = {key: getattr(cfg, key) for key in traced_fields(cfg)}
    _check_entry(entry, values)
    # Switches, like clipping: a piece that would do nothing is left out of the program rather
    # than computed with a traced zero (ops per parameter per step that a small model feels).
    clip = cfg.clip_norm > 0
    coupled_decay = cfg.weight_decay > 0 and "weight_decay" not in entry.traced
    values["clip_norm"] = cfg.clip_norm if clip else 1.0  # off: never read, and no division by zero

    def build(**hyperparams: jax.Array) -> optax.GradientTransformation:
        parts = [optax.clip_by_global_norm(hyperparams["clip_norm"])] if clip else []
        if coupled_decay:  # L2 coupled to the gradient, as torch.optim does for these optimizers.
            parts.append(optax.add_decayed_weights(hyperparams["weight_decay"], mask=decay_mask))
        parts.append(entry.factory(**{key: hyperparams[key] for key in entry.traced}))
        if multiplier is not None:
            parts.append(optax.scale_by_schedule(multiplier))
        return optax.chain(*parts)

    # What build makes, apart from the values: its initial state is then one compiled call (``traced.py``).
    shape: tuple | None = (entry.factory, tuple(entry.traced), clip, coupled_decay, multiplier is not None)
    try:
        hash(shape)
    except TypeError:  # a factory object that cannot be a key: initialised operation by operation
        shape = None
    return traced_hyperparams(build, shape, **values)


def _check_entry(entry: OptimizerEntry, values: dict[str, float]) -> None:
    """A registration that names a field the config does not trace, or a factory that fails or returns
    no Optax transformation, is one line naming its file (before anything is compiled or stored)."""
    where = f"{entry.origin}: optimizer '{entry.name}'"
    unknown = [key for key in entry.traced if key not in values]
    if unknown:
        raise RegistryError(f"{where}: traced={entry.traced} names {', '.join(unknown)}, not a traced field of "
                            f"OptimizerConfig; choose from {', '.join(values)}")
    try:
        made = entry.factory(**{key: values[key] for key in entry.traced})
    except PipelineError:
        raise
    except Exception as exc:  # a user's factory that cannot build its transformation
        raise ConfigError(f"{where} cannot be built: {typed_line(exc)}") from exc
    if not isinstance(made, optax.GradientTransformation):
        raise ConfigError(f"{where}: its factory returned {type(made).__name__}, not an optax.GradientTransformation")


def hyperparams(opt_state: Any) -> dict[str, jax.Array]:
    """The traced hyperparameters inside an optimizer state made by ``make_optimizer``."""
    if isinstance(opt_state, optax.MultiStepsState):
        return opt_state.inner_opt_state.hyperparams
    return opt_state.hyperparams
