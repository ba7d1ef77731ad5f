"""Per-feature statistics of a training split, gathered chunk by chunk while it is written.

Each chunk's mean and sum of squared deviations are computed in float64 and merged with
Chan et al.'s pairwise rule, which stays accurate where a running sum of squares would cancel
(large means, many rows). Stored in ``DatasetInfo.feature_stats`` for float features only:
``{"mean": [...], "std": [...], "min": m, "max": M}``, mean and population std flattened over
the feature shape, min and max over every element. Integer (token) features get ``{}``.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.dataset import DatasetInfo

SLICE_VALUES = 1 << 22  # float64 values per merged slice: 32 MiB


def _short(value: float) -> float:
    # Nine significant digits recover every float32 exactly and keep the footer JSON small.
    return float(f"{value:.9g}")


class RunningStats:
    """``update(x)`` with chunks of rows (N, *shape); ``to_dict()`` once done."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min, self.max = np.inf, -np.inf

    def update(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        flat = x.reshape(len(x), -1)
        # A whole in-memory split can arrive at once: its float64 copies are made a slice at a time.
        step = max(1, SLICE_VALUES // max(1, flat.shape[1]))
        for start in range(0, len(flat), step):
            self._merge(flat[start:start + step])

    def _merge(self, flat: np.ndarray) -> None:
        n, mean = len(flat), flat.mean(axis=0, dtype=np.float64)
        deviation = flat - mean  # float64: one copy of the slice
        m2 = np.einsum("ij,ij->j", deviation, deviation)
        self.min, self.max = min(self.min, float(flat.min())), max(self.max, float(flat.max()))
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * n / total)
        self.count = total

    def to_dict(self) -> dict:
        if self.mean is None:
            return {}
        std = np.sqrt(np.maximum(self.m2 / self.count, 0.0))
        return {"mean": [_short(v) for v in self.mean], "std": [_short(v) for v in std],
                "min": _short(self.min), "max": _short(self.max)}


def feature_stats(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) as float32 arrays shaped like ``info.feature_shape``; None when none are stored.

    A feature that never varies has std 0: divide by ``np.where(std > 0, std, 1)``.
    """
    stats = info.feature_stats
    if not stats or "mean" not in stats or "std" not in stats:
        return None
    shape = tuple(info.feature_shape)
    mean = np.asarray(stats["mean"], np.float32).reshape(shape)
    std = np.asarray(stats["std"], np.float32).reshape(shape)
    return mean, std


def summary(info: DatasetInfo) -> str:
    """One line for ``pipeline data show``."""
    stats = info.feature_stats
    if not stats:
        if np.dtype(info.feature_dtype).kind in "iub":
            return "none (integer features)"
        return "none (imported before statistics were kept; re-import to add them)"
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    constant = int((std == 0).sum())
    return (f"train split, {mean.size} values: mean {mean.min():.4g} to {mean.max():.4g}, "
            f"std {std.min():.4g} to {std.max():.4g} ({constant} constant), "
            f"min {stats['min']:.4g}, max {stats['max']:.4g}")
