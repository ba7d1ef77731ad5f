"""Losses and metrics per task.

Each objective has a training ``loss`` (mean over the batch, what the gradient follows)
and evaluation ``sums`` that add up over batches (with a mask for padded rows) and are
turned into metrics by ``finalize``: sums make whole-split metrics exact, whatever the
evaluation batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

Metrics = dict[str, jax.Array]


def _classification_loss(logits_BxC: jax.Array, y_B: jax.Array, label_smoothing) -> tuple[jax.Array, Metrics]:
    # Cross-entropy against (1 - s) * onehot + s / C, without building the targets:
    # logsumexp(z) - (1 - s) * z_y - s * mean(z).
    lse_B = jax.nn.logsumexp(logits_BxC, axis=-1)
    z_y_B = jnp.take_along_axis(logits_BxC, y_B[:, None], axis=-1)[:, 0]
    loss = (lse_B - (1.0 - label_smoothing) * z_y_B - label_smoothing * logits_BxC.mean(-1)).mean()
    accuracy = (jnp.argmax(logits_BxC, -1) == y_B).mean()
    return loss, {"loss": loss, "accuracy": accuracy}


def _classification_sums(logits_BxC: jax.Array, y_B: jax.Array, mask_B: jax.Array) -> Metrics:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B)
    correct = (jnp.argmax(logits_BxC, -1) == y_B)
    return {"loss": (ce * mask_B).sum(), "correct": (correct * mask_B).sum(), "count": mask_B.sum()}


def _classification_finalize(s: dict[str, float]) -> dict[str, float]:
    return {"loss": s["loss"] / s["count"], "accuracy": s["correct"] / s["count"]}


def _regression_loss(out_BxD: jax.Array, y_B: jax.Array, label_smoothing) -> tuple[jax.Array, Metrics]:
    err = out_BxD - y_B.reshape(out_BxD.shape)
    mse = jnp.mean(err**2)
    return mse, {"loss": mse, "mae": jnp.mean(jnp.abs(err))}


def _regression_sums(out_BxD: jax.Array, y_B: jax.Array, mask_B: jax.Array) -> Metrics:
    y = y_B.reshape(out_BxD.shape)
    m = mask_B[:, None]
    err = out_BxD - y
    count = m.sum() * y.shape[-1]
    mean = (y * m).sum() / jnp.maximum(count, 1.0)
    # Centred per batch: sum(y^2) - n*mean^2 would cancel catastrophically for offset targets.
    return {
        "sse": (err**2 * m).sum(), "sae": (jnp.abs(err) * m).sum(),
        "count": count, "mean_y": mean, "m2_y": (((y - mean) * m) ** 2).sum(),
    }


def _regression_combine(b: Metrics) -> Metrics:
    """Merge per-batch centred statistics (Chan et al.'s parallel variance)."""
    count = b["count"].sum()
    mean = (b["count"] * b["mean_y"]).sum() / jnp.maximum(count, 1.0)
    m2 = b["m2_y"].sum() + (b["count"] * (b["mean_y"] - mean) ** 2).sum()
    return {"sse": b["sse"].sum(), "sae": b["sae"].sum(), "count": count, "mean_y": mean, "m2_y": m2}


def _regression_finalize(s: dict[str, float]) -> dict[str, float]:
    n = s["count"]
    mse = s["sse"] / n
    variance = s["m2_y"] / n
    r2 = 1.0 - mse / variance if variance > 0 else float("nan")
    return {"loss": mse, "mse": mse, "mae": s["sae"] / n, "r2": r2}


def _sum_batches(b: Metrics) -> Metrics:
    return jax.tree.map(lambda a: a.sum(0), b)


def _lm_loss(logits_BxLxV: jax.Array, y_BxL: jax.Array, label_smoothing) -> tuple[jax.Array, Metrics]:
    loss, _ = _classification_loss(logits_BxLxV.reshape(-1, logits_BxLxV.shape[-1]), y_BxL.reshape(-1), label_smoothing)
    return loss, {"loss": loss, "bits_per_byte": loss / math.log(2)}


def _lm_sums(logits_BxLxV: jax.Array, y_BxL: jax.Array, mask_B: jax.Array) -> Metrics:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, y_BxL)  # B x L
    m = mask_B[:, None] * jnp.ones_like(ce)
    return {"loss": (ce * m).sum(), "count": m.sum()}


def _lm_finalize(s: dict[str, float]) -> dict[str, float]:
    loss = s["loss"] / s["count"]
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": loss / math.log(2)}


@dataclass(frozen=True)
class Objective:
    loss: Callable[..., tuple[jax.Array, Metrics]]
    sums: Callable[[jax.Array, jax.Array, jax.Array], Metrics]  # statistics of one padded batch
    finalize: Callable[[dict[str, float]], dict[str, float]]  # combined statistics -> metrics
    best: str  # the metric that picks the best checkpoint by default
    combine: Callable[[Metrics], Metrics] = _sum_batches  # per-batch statistics (leading axis) -> one


OBJECTIVES = {
    "classification": Objective(_classification_loss, _classification_sums, _classification_finalize, "accuracy"),
    "regression": Objective(_regression_loss, _regression_sums, _regression_finalize, "loss", _regression_combine),
    "language_modeling": Objective(_lm_loss, _lm_sums, _lm_finalize, "loss"),
}


def higher_is_better(metric: str) -> bool:
    return metric in ("accuracy", "r2")


def objective_for(task: str) -> Objective:
    return OBJECTIVES[task]
