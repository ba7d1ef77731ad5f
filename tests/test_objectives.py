"""Losses and metrics against numpy, and whole-split metrics from padded evaluation batches."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.data.dataset import Split
from pipeline.data.device import eval_batches
from pipeline.objectives import objective_for
from pipeline.sharding import make_mesh

RNG = np.random.default_rng(0)


def HP(label_smoothing: float) -> dict:
    """The traced hyperparameters a loss receives."""
    return {"label_smoothing": label_smoothing}


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def whole_split_metrics(task: str, out: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
    """Metrics as the evaluation computes them: padded batches, per-batch statistics combined in
    float32 (as ``eval_sums`` does), one finalize on the host.

    Padded rows get garbage outputs, so a metric that forgot the mask would be far off.
    """
    objective = objective_for(task)
    batches = eval_batches(Split(out, y), batch_size, make_mesh())
    mask = np.asarray(batches.mask)
    garbage = np.where(mask.reshape(mask.shape + (1,) * (out.ndim - 1)) > 0, np.asarray(batches.x), 1e3)
    sums = jax.jit(lambda *a: objective.combine(jax.vmap(objective.sums)(*a)))
    totals = {name: float(v) for name, v in sums(jnp.asarray(garbage), batches.y, batches.mask).items()}
    return {k: float(v) for k, v in objective.finalize(totals).items()}


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_classification_loss_and_accuracy_match_numpy(smoothing):
    logits = RNG.normal(size=(9, 4)).astype(np.float32) * 3
    y = RNG.integers(0, 4, size=9).astype(np.int32)
    loss, metrics = jax.jit(objective_for("classification").loss)(jnp.asarray(logits), jnp.asarray(y), HP(smoothing))
    targets = np.eye(4)[y] * (1 - smoothing) + smoothing / 4
    expected = -(targets * log_softmax(logits.astype(np.float64))).sum(-1).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["loss"]) == float(loss)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(logits.argmax(-1) == y))


def test_label_smoothing_has_its_closed_form_minimum():
    # With smoothing s the best logits put probability 1 - s + s/C on the label: the loss is
    # then the entropy of the smoothed target.
    s, c = 0.2, 5
    target = np.full(c, s / c)
    target[2] += 1 - s
    logits = np.log(target)[None].astype(np.float32)
    loss, _ = jax.jit(objective_for("classification").loss)(jnp.asarray(logits), jnp.asarray([2]), HP(s))
    np.testing.assert_allclose(float(loss), -(target * np.log(target)).sum(), rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 23, 512])
def test_classification_eval_metrics_are_exact_for_any_batch_size(batch_size):
    logits = RNG.normal(size=(23, 3)).astype(np.float32)
    y = RNG.integers(0, 3, size=23).astype(np.int32)
    got = whole_split_metrics("classification", logits, y, batch_size)
    ce = -log_softmax(logits.astype(np.float64))[np.arange(23), y]
    assert got["loss"] == pytest.approx(ce.mean(), rel=1e-6)
    assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y), abs=1e-12)


@pytest.mark.parametrize("out_shape, y_shape", [((8, 1), (8,)), ((8, 2), (8, 2))])
def test_regression_loss_matches_numpy(out_shape, y_shape):
    out = RNG.normal(size=out_shape).astype(np.float32)
    y = RNG.normal(size=y_shape).astype(np.float32)
    loss, metrics = jax.jit(objective_for("regression").loss)(jnp.asarray(out), jnp.asarray(y), HP(0.0))
    err = out.astype(np.float64) - y.reshape(out_shape)
    np.testing.assert_allclose(float(loss), np.mean(err**2), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["mae"]), np.mean(np.abs(err)), rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 5, 8, 29, 512])
def test_regression_eval_metrics_are_exact_for_any_batch_size(batch_size):
    y = (3.0 + 2.0 * RNG.normal(size=29)).astype(np.float32)
    pred = (y + RNG.normal(size=29)).astype(np.float32)[:, None]
    got = whole_split_metrics("regression", pred, y, batch_size)
    err = pred[:, 0].astype(np.float64) - y
    mse = np.mean(err**2)
    assert got["loss"] == got["mse"] == pytest.approx(mse, rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    assert got["r2"] == pytest.approx(1.0 - mse / np.var(y.astype(np.float64)), rel=1e-5)


def test_r2_of_targets_with_a_large_offset():
    y = (1e4 + RNG.normal(size=1000)).astype(np.float32)
    pred = (y + 0.3 * RNG.normal(size=1000)).astype(np.float32)[:, None]
    got = whole_split_metrics("regression", pred, y, 512)
    err = pred[:, 0].astype(np.float64) - y
    assert got["r2"] == pytest.approx(1.0 - np.mean(err**2) / np.var(y.astype(np.float64)), abs=1e-3)


def test_r2_of_a_constant_target_is_nan():
    got = whole_split_metrics("regression", np.ones((4, 1), np.float32), np.full(4, 2.0, np.float32), 3)
    assert got["mse"] == pytest.approx(1.0) and math.isnan(got["r2"])


def test_binary_targets_work_as_classes_and_as_numbers():
    y = np.array([0, 1, 1, 0, 1], np.int32)
    logits = np.array([[2.0, -1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.5], [-1.0, 1.0]], np.float32)
    got = whole_split_metrics("classification", logits, y, 2)
    assert got["accuracy"] == pytest.approx(0.8)
    pred = np.array([[0.1], [0.9], [0.4], [0.0], [1.0]], np.float32)
    got = whole_split_metrics("regression", pred, y.astype(np.float32), 2)
    assert got["mse"] == pytest.approx(np.mean((pred[:, 0] - y) ** 2), rel=1e-6)
    assert got["r2"] == pytest.approx(1 - got["mse"] / np.var(y), rel=1e-6)


def test_language_modelling_loss_is_per_token_cross_entropy():
    logits = RNG.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = RNG.integers(0, 7, size=(2, 5)).astype(np.int32)
    objective = objective_for("language_modeling")
    loss, metrics = jax.jit(objective.loss)(jnp.asarray(logits), jnp.asarray(tokens), HP(0.0))
    ce = -np.take_along_axis(log_softmax(logits.astype(np.float64)), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), ce.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["bits_per_byte"]), ce.mean() / math.log(2), rtol=1e-6)
    sums = jax.jit(objective.sums)(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray([1.0, 0.0]))
    final = objective.finalize({k: float(v) for k, v in sums.items()})
    assert final["loss"] == pytest.approx(ce[0].mean(), rel=1e-6)  # the masked sequence does not count
    assert final["perplexity"] == pytest.approx(math.exp(ce[0].mean()), rel=1e-6)
