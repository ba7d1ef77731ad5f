"""Objectives: a loss and its metrics, chosen by name (``objective=NAME``) or by the dataset's task.

Each objective has a training ``loss`` (mean over the batch, what the gradient follows)
and evaluation ``sums`` that add up over batches (with a mask for padded rows) and are
turned into metrics by ``finalize``: sums make whole-split metrics exact, whatever the
evaluation batch size. ``higher_is_better`` names every evaluation metric and which way is
better; ``best_metric``, early stopping and sweeps check names against it. Experiment files
register their own with ``pipeline.register_objective``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import optax

from pipeline.data.token_bytes import table_of
from pipeline.errors import PipelineError
from pipeline.registry import objective as registered_objective
from pipeline.registry import register_objective

Metrics = dict[str, jax.Array]


def _classification_loss(logits_BxC: jax.Array, y_B: jax.Array, hparams: Metrics) -> tuple[jax.Array, Metrics]:
    return _smoothed_cross_entropy(logits_BxC, y_B, hparams.get("label_smoothing"))


def _smoothed_cross_entropy(logits_BxC: jax.Array, y_B: jax.Array, label_smoothing) -> tuple[jax.Array, Metrics]:
    # Cross-entropy against (1 - s) * onehot + s / C, without building the targets:
    # logsumexp(z) - (1 - s) * z_y - s * mean(z). ``label_smoothing`` None (the switch off): s = 0,
    # and the smoothing term is not in the program at all.
    lse_B = jax.nn.logsumexp(logits_BxC, axis=-1)
    z_y_B = jnp.take_along_axis(logits_BxC, y_B[:, None], axis=-1)[:, 0]
    if label_smoothing is None:
        loss = (lse_B - z_y_B).mean()
    else:
        loss = (lse_B - (1.0 - label_smoothing) * z_y_B - label_smoothing * logits_BxC.mean(-1)).mean()
    accuracy = (jnp.argmax(logits_BxC, -1) == y_B).mean()
    return loss, {"loss": loss, "accuracy": accuracy}


def _classification_sums(logits_BxC: jax.Array, y_B: jax.Array, mask_B: jax.Array) -> Metrics:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B)
    correct = (jnp.argmax(logits_BxC, -1) == y_B)
    return {"loss": (ce * mask_B).sum(), "correct": (correct * mask_B).sum(), "count": mask_B.sum()}


def _classification_finalize(s: dict[str, float]) -> dict[str, float]:
    return {"loss": s["loss"] / s["count"], "accuracy": s["correct"] / s["count"]}


def _regression_loss(out_BxD: jax.Array, y_B: jax.Array, hparams: Metrics) -> tuple[jax.Array, Metrics]:
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


# Language modelling. ``bytes_V`` is the UTF-8 byte length of every token id (a text import stores it,
# pipeline/data/token_bytes.py); without one every token is a byte (builtin:text). Bits per byte is
# total nats / ln 2 / total bytes of the predicted tokens: comparable across tokenizers.
def _target_bytes(y_BxL: jax.Array, bytes_V) -> jax.Array:
    return jnp.ones(y_BxL.shape, jnp.float32) if bytes_V is None else jnp.asarray(bytes_V, jnp.float32)[y_BxL]


def _lm_loss(logits_BxLxV: jax.Array, y_BxL: jax.Array, hparams: Metrics, bytes_V=None) -> tuple[jax.Array, Metrics]:
    loss, _ = _smoothed_cross_entropy(logits_BxLxV.reshape(-1, logits_BxLxV.shape[-1]), y_BxL.reshape(-1),
                                      hparams.get("label_smoothing"))
    if bytes_V is None:
        return loss, {"loss": loss, "bits_per_byte": loss / math.log(2)}
    per_byte = loss * y_BxL.size / jnp.maximum(_target_bytes(y_BxL, bytes_V).sum(), 1.0)
    return loss, {"loss": loss, "bits_per_byte": per_byte / math.log(2)}


def _lm_sums(logits_BxLxV: jax.Array, y_BxL: jax.Array, mask_B: jax.Array, bytes_V=None) -> Metrics:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, y_BxL)  # B x L
    m = mask_B[:, None] * jnp.ones_like(ce)
    return {"loss": (ce * m).sum(), "count": m.sum(), "bytes": (_target_bytes(y_BxL, bytes_V) * m).sum()}


def _lm_finalize(s: dict[str, float]) -> dict[str, float]:
    loss = s["loss"] / s["count"]
    if "bytes" not in s:
        nats_per_byte = loss
    else:  # a split whose targets are all end-of-document tokens predicts no byte
        nats_per_byte = s["loss"] / s["bytes"] if s["bytes"] > 0 else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": nats_per_byte / math.log(2)}


def _with_token_bytes(chosen: Objective, info) -> Objective:
    """The built-in LM objective counting the dataset's bytes per token, when a text import stored them."""
    bytes_V = table_of(getattr(info, "text", None) or {})
    if chosen.name != "language_modeling" or chosen.loss is not _lm_loss or bytes_V is None:
        return chosen
    return dataclasses.replace(chosen, loss=functools.partial(_lm_loss, bytes_V=bytes_V),
                               sums=functools.partial(_lm_sums, bytes_V=bytes_V))


class ObjectiveError(PipelineError):
    """An objective that does not fit the dataset or the config."""


@dataclass(frozen=True)
class Objective:
    """A loss to train by and the metrics to evaluate by.

    ``loss(outputs, labels, hparams) -> (loss, {name: value})`` is the batch mean the gradient
    follows (``hparams`` holds traced scalars such as ``label_smoothing``); ``sums(outputs,
    labels, mask)`` are per-batch statistics that add up (rows with mask 0 are padding);
    ``finalize(sums) -> {metric: value}`` turns a whole split's sums into metrics;
    ``higher_is_better`` maps every metric ``finalize`` returns to its direction.
    """

    name: str
    loss: Callable[..., tuple[jax.Array, Metrics]]
    sums: Callable[[jax.Array, jax.Array, jax.Array], Metrics]
    finalize: Callable[[dict[str, float]], dict[str, float]]
    higher_is_better: dict[str, bool]
    best: str  # the metric that picks the best checkpoint by default
    tasks: tuple[str, ...] = ()  # dataset tasks it fits; () fits any
    combine: Callable[[Metrics], Metrics] = _sum_batches  # per-batch statistics (leading axis) -> one
    origin: str = field(default="", compare=False)  # the file that registered it

    def __post_init__(self) -> None:
        if self.best not in self.higher_is_better:
            raise ObjectiveError(f"objective '{self.name}': its best metric '{self.best}' is not one of its "
                                 f"metrics ({', '.join(self.higher_is_better)})")

    def check_metric(self, metric: str, key: str = "best_metric") -> None:
        if metric not in self.higher_is_better:
            raise ObjectiveError(f"bad value for '{key}': '{metric}' is not a metric of objective '{self.name}' "
                                 f"({', '.join(self.higher_is_better)})")

    def check_task(self, task: str, dataset: str) -> None:
        if self.tasks and task not in self.tasks:
            raise ObjectiveError(f"objective '{self.name}' does not fit dataset '{dataset}' ({task}); it is for "
                                 f"{', '.join(self.tasks)} data")


register_objective(Objective("classification", _classification_loss, _classification_sums, _classification_finalize,
                             {"loss": False, "accuracy": True}, "accuracy", ("classification",)))
register_objective(Objective("regression", _regression_loss, _regression_sums, _regression_finalize,
                             {"loss": False, "mse": False, "mae": False, "r2": True}, "loss", ("regression",),
                             _regression_combine))
register_objective(Objective("language_modeling", _lm_loss, _lm_sums, _lm_finalize,
                             {"loss": False, "perplexity": False, "bits_per_byte": False}, "loss",
                             ("language_modeling",)))


def objective_for(task: str, name: str = "", dataset: str = "") -> Objective:
    """The objective called ``name``, or the task's own when ``name`` is empty; checked against the task."""
    chosen = registered_objective(name or task)
    chosen.check_task(task, dataset or "the dataset")
    return chosen


def resolve(cfg, info) -> Objective:
    """The objective of a run, with its best metric checked: before anything is built or compiled.

    A text dataset's bytes per token are bound into the language-modelling objective here.
    """
    chosen = objective_for(info.task, cfg.objective, info.name)
    if cfg.best_metric:
        chosen.check_metric(cfg.best_metric)
    return _with_token_bytes(chosen, info)


def best_metric(cfg, objective: Objective) -> str:
    return cfg.best_metric or objective.best
