"""What a learning-curve plot shows: a panel per metric, and y-ranges that make late differences visible.

Pure numpy over long-format columns (step, split, name, value): no matplotlib here, so the choices
are tested as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Columns = dict[str, list]
# A metric evaluated on val/test whose per-step train curve is a function of the train loss
# (perplexity = exp(mean cross-entropy)); the train steps record only the loss, so the curve is derived.
FROM_LOSS = {"perplexity": np.exp}
LATER_PART = 0.5  # a zoomed axis covers each curve from this fraction of its last step on
PAD = 0.08  # of the zoomed range, above and below


def with_derived_curves(columns: Columns) -> Columns:
    """``columns`` plus the train curve of each ``FROM_LOSS`` metric that is evaluated but not trained on."""
    names, splits = np.asarray(columns["name"], dtype=object), np.asarray(columns["split"], dtype=object)
    out = {k: list(columns[k]) for k in ("step", "split", "name", "value")}
    train_loss = (names == "loss") & (splits == "train")
    for metric, derive in FROM_LOSS.items():
        if not (names == metric).any() or ((names == metric) & (splits == "train")).any() or not train_loss.any():
            continue
        with np.errstate(over="ignore"):
            values = derive(np.minimum(np.asarray(columns["value"], float)[train_loss], 700.0))
        out["step"] += list(np.asarray(columns["step"])[train_loss])
        out["split"] += ["train"] * int(train_loss.sum())
        out["name"] += [metric] * int(train_loss.sum())
        out["value"] += list(values)
    return out


def _points(columns: Columns, name: str) -> dict[tuple[str, int], float]:
    return {(s, int(t)): float(v) for t, s, n, v in zip(columns["step"], columns["split"], columns["name"],
                                                       columns["value"]) if n == name}


def copies_loss(runs: Iterable[Columns], name: str) -> bool:
    """Whether metric ``name`` equals the loss wherever both were recorded, in every run (regression's
    ``mse`` is its loss): such a panel would repeat the loss panel."""
    seen = False
    for columns in runs:
        mine, loss = _points(columns, name), _points(columns, "loss")
        if not mine:
            continue
        if not set(mine) <= set(loss) or any(not math.isclose(v, loss[k], rel_tol=1e-6) for k, v in mine.items()):
            return False
        seen = True
    return seen


def panel_metrics(runs: list[Columns]) -> list[str]:
    """``loss`` first, then every other metric of any run in order of first appearance, less copies of the loss."""
    names = list(dict.fromkeys(n for columns in runs for n in columns["name"]))
    return ["loss"] * ("loss" in names) + [n for n in names if n != "loss" and not copies_loss(runs, n)]


def later_part(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The finite values of one curve from ``LATER_PART`` of its last step on (its last point at least)."""
    finite = np.isfinite(values)
    if not finite.any():
        return values[:0]
    steps, values = steps[finite], values[finite]
    start = steps.min() + LATER_PART * (steps.max() - steps.min())
    return values[steps >= start]


def zoomed_range(curves: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float] | None:
    """A y-range that holds the later part of every ``(steps, values)`` curve, padded; None without data.

    Early values (an accuracy of 0.1 before training) would stretch the axis until 0.97 and 0.99
    look alike; the early part of a curve runs off the axis instead.
    """
    parts = [later_part(np.asarray(s, float), np.asarray(v, float)) for s, v in curves]
    values = np.concatenate(parts) if parts else np.array([])
    if values.size == 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = PAD * (hi - lo) if hi > lo else max(0.05 * abs(hi), 1e-3)
    return lo - pad, hi + pad
