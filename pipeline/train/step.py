"""Pure step functions: one update, K updates in a scan, and whole-split evaluation.

Every function takes a ``StepSpec`` first so that ``functools.partial(fn, spec)`` can be
handed to ``jax.jit``. The model is merged from its pytrees inside the compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pipeline.train.augment import Mix, augment, step_key
from pipeline.train.state import StepSpec, TrainState, raw_keys, typed_keys


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def apply_model(spec: StepSpec, params, rest, x, train: bool):
    """Model outputs in float32, computed in ``spec.compute_dtype``, and the model's updated other state.

    ``train`` picks the model's train or eval view (dropout, batch statistics).
    """
    if spec.compute_dtype != jnp.float32:
        params, x = _cast_floats(params, spec.compute_dtype), _cast_floats(x, spec.compute_dtype)
    graphdef = spec.graphdef if train else spec.eval_graphdef
    # Fresh Variables (copy=True): BatchNorm statistics and dropout RNG counts update in place.
    model = nnx.merge(graphdef, params, typed_keys(rest, spec.key_leaves), copy=True)
    out = model(x)
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return out.astype(jnp.float32), raw_keys(new_rest)


def loss_fn(params, spec: StepSpec, state: TrainState, x, y, mix: Mix | None = None):
    out, new_rest = apply_model(spec, params, state.rest, x, train=True)
    loss, metrics = spec.objective.loss(out, y, state.hparams)
    if mix is not None:  # mixup: the objective's loss (and metrics) on both labels, mixed like the images
        other_loss, other_metrics = spec.objective.loss(out, mix.y_other, state.hparams)
        loss = mix.lam * loss + (1.0 - mix.lam) * other_loss
        metrics = jax.tree.map(lambda a, b: mix.lam * a + (1.0 - mix.lam) * b, metrics, other_metrics)
    return loss, (metrics, new_rest)


def train_step(spec: StepSpec, state: TrainState, x, y) -> tuple[TrainState, dict]:
    """One optimizer update on one batch (augmented first when ``data.augment`` says so)."""
    mix = None
    if spec.augment is not None:  # drawn from this member's own seed and update count
        x, mix = augment(spec.augment, step_key(state.hparams["seed"], state.step), x, y)
    grads, (metrics, new_rest) = jax.grad(loss_fn, has_aux=True)(state.params, spec, state, x, y, mix)
    if spec.compute_dtype != jnp.float32:
        grads = _cast_floats(grads, jnp.float32)
    updates, opt_state = spec.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
        decay = state.hparams["ema_decay"]
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    new_state = state.replace(params=params, rest=_keep_dtypes(new_rest, state.rest),
                              opt_state=opt_state, step=state.step + 1, ema=ema)
    return new_state, metrics


def _keep_dtypes(new, old):
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


# What a step changes; the hyperparameters stay as they are, so the scans below close over
# them instead of carrying them (3% of the digits MLP's step).
MOVING = ("params", "rest", "opt_state", "step", "ema")


def _scan_steps(spec: StepSpec, state: TrainState, xs, batch_of) -> tuple[TrainState, dict]:
    """``train_step`` once per leading entry of ``xs``; ``batch_of(x)`` gives that step's (x, y)."""

    def body(moving: dict, x):
        new, metrics = train_step(spec, state.replace(**moving), *batch_of(x))
        return {f: getattr(new, f) for f in MOVING}, metrics

    k = jax.tree.leaves(xs)[0].shape[0]
    unroll = spec.unroll if k % spec.unroll == 0 else 1  # no remainder loop: it would only add compile time
    moving, metrics = jax.lax.scan(body, {f: getattr(state, f) for f in MOVING}, xs, unroll=unroll)
    return state.replace(**moving), metrics


def train_many(spec: StepSpec, state: TrainState, x_all, y_all, idx_KxB) -> tuple[TrainState, dict]:
    """K updates in one compiled call over device-resident data (a lax.scan).

    ``idx_KxB`` holds each step's row indices (``pipeline.data.order``); the rows are
    gathered on the device.
    """
    return _scan_steps(spec, state, idx_KxB, lambda idx_B: (x_all[idx_B], y_all[idx_B]))


def train_scan(spec: StepSpec, state: TrainState, x_KxB, y_KxB) -> tuple[TrainState, dict]:
    """K updates in one compiled call over K batches that the host stacked (the streaming path)."""
    return _scan_steps(spec, state, (x_KxB, y_KxB), lambda batch: batch)


def eval_sums(spec: StepSpec, state: TrainState, x_NbxB, y_NbxB, mask_NbxB) -> dict:
    """Sums of the objective's evaluation statistics over padded batches (lax.map).

    Evaluates the moving average of the parameters when the state keeps one.
    """
    params = state.params if state.ema is None else state.ema

    def one(batch):
        x, y, mask = batch
        out, _ = apply_model(spec, params, state.rest, x, train=False)
        return spec.objective.sums(out, y, mask)

    return spec.objective.combine(jax.lax.map(one, (x_NbxB, y_NbxB, mask_NbxB)))
