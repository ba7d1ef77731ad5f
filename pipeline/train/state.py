"""The train state: a pytree of arrays and nothing with behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from pipeline.config import Config
from pipeline.data.dataset import DatasetInfo
from pipeline.models import build_model
from pipeline.objectives import Objective, objective_for
from pipeline.optim import make_optimizer


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of nnx.Param
    rest: Any  # every other model variable (norm statistics, ...)
    opt_state: Any  # holds the traced optimizer hyperparameters
    step: jax.Array  # int32 count of applied updates
    key: jax.Array  # dropout randomness, folded with the step
    hparams: dict[str, jax.Array]  # traced model/objective hyperparameters (dropout, label smoothing, EMA)
    ema: Any = None  # moving average of params when cfg.ema_decay > 0, else None


@dataclass(frozen=True)
class StepSpec:
    """What the compiled step depends on besides the state; bound with functools.partial."""

    graphdef: Any
    tx: optax.GradientTransformation
    objective: Objective
    batch_size: int
    compute_dtype: Any  # jnp.float32 or jnp.bfloat16
    dropout: bool = False  # dropout layers draw masks (cfg.model.dropout > 0); the rate itself is traced


def create_state(cfg: Config, info: DatasetInfo, total_steps: int) -> tuple[StepSpec, TrainState]:
    """Build the model, split it once, and initialise the optimizer."""
    model = build_model(cfg.model, info.feature_shape, info.output_size, cfg.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg.optimizer, total_steps, cfg.grad_accum)
    spec = StepSpec(
        graphdef=graphdef,
        tx=tx,
        objective=objective_for(info.task),
        batch_size=cfg.batch_size,
        compute_dtype=jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32,
        dropout=cfg.model.dropout > 0,
    )
    state = TrainState(
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        step=jnp.zeros([], jnp.int32),
        key=jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 1),
        hparams={
            "dropout": jnp.asarray(cfg.model.dropout, jnp.float32),
            "label_smoothing": jnp.asarray(cfg.label_smoothing, jnp.float32),
            "ema_decay": jnp.asarray(cfg.ema_decay, jnp.float32),
        },
        ema=jax.tree.map(jnp.copy, params) if cfg.ema_decay > 0 else None,
    )
    return spec, state
