"""The built-in schedules, registered like a user's (``pipeline.register_schedule``).

A schedule is a multiplier of the peak learning rate, which stays a traced hyperparameter: its
shape is part of the compiled program, its height is not. Each factory is Optax's schedule with
peak 1, so the scheduled update equals Optax's own scheduled learning rate.
"""

from __future__ import annotations

import dataclasses

import optax

from pipeline.config import ConfigError, OptimizerConfig
from pipeline.registry import register_schedule, schedule


def schedule_multiplier(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule | None:
    """The multiplier of ``cfg.schedule`` over ``total_steps`` updates; None is a constant 1."""
    total = max(total_steps, 1)
    shaped = dataclasses.replace(cfg, warmup_steps=min(cfg.warmup_steps, total))
    return schedule(cfg.schedule).factory(shaped, total)


def constant(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule | None:
    """1, after a linear warm-up from 0 when ``warmup_steps`` > 0."""
    return optax.linear_schedule(0.0, 1.0, cfg.warmup_steps) if cfg.warmup_steps else None


def cosine(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(1.0, total_steps)


def warmup_cosine(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    if cfg.warmup_steps == 0:  # no warm-up step at multiplier 0: exactly Optax's schedule with warmup_steps=0
        return optax.cosine_decay_schedule(1.0, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1))


def linear(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """From 1 down to 0 at the last update."""
    return optax.linear_schedule(1.0, 0.0, total_steps)


def warmup_linear(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Up from 0 to 1 over ``warmup_steps``, then down to 0 at the last update."""
    if cfg.warmup_steps == 0:
        return linear(cfg, total_steps)
    decay = optax.linear_schedule(1.0, 0.0, max(total_steps - cfg.warmup_steps, 1))
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, cfg.warmup_steps), decay], [cfg.warmup_steps])


def exponential(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """``decay_rate ** (count / total_steps)``: 1 at the start, ``decay_rate`` at the last update."""
    if not 0.0 < cfg.decay_rate <= 1.0:
        raise ConfigError(f"bad value for 'optimizer.decay_rate': {cfg.decay_rate} must be in (0, 1] "
                          "(the multiplier the exponential schedule reaches at the last step)")
    return optax.exponential_decay(1.0, total_steps, cfg.decay_rate)


def onecycle(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Optax's one-cycle shape: up from 1/25 over the first 30% of the updates, then down to 1/250000."""
    return optax.cosine_onecycle_schedule(total_steps, 1.0)


register_schedule("constant", constant)
register_schedule("cosine", cosine)
register_schedule("warmup_cosine", warmup_cosine)
register_schedule("linear", linear)
register_schedule("warmup_linear", warmup_linear)
register_schedule("exponential", exponential)
register_schedule("onecycle", onecycle)
