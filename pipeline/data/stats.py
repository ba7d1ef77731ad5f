"""Per-feature statistics of a training split, gathered chunk by chunk while it is written.

Each chunk's mean and sum of squared deviations are computed in float64 and merged with
Chan et al.'s pairwise rule, which stays accurate where a running sum of squares would cancel
(large means, many rows). Stored in ``DatasetInfo.feature_stats`` for float features only:
``{"mean": [...], "std": [...], "min": m, "max": M}``, mean and population std flattened over
the feature shape, min and max over every element. Integer (token) features get ``{}``.

Images (uint8 features of shape (H, W, C)) get per-channel statistics instead, exact, from a
256-bin histogram of each channel: ``{"mean": [C], "std": [C], "min": m, "max": M, "per": "channel"}``,
in pixel units (0 to 255); ``feature_stats`` then gives arrays of shape (C,), which broadcast
over (H, W, C).
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


class ChannelStats:
    """Per-channel statistics of uint8 images (N, H, W, C), from exact per-channel histograms."""

    def __init__(self, channels: int) -> None:
        self.counts = np.zeros((channels, 256), np.int64)

    def update(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, self.counts.shape[0])
        for channel in range(self.counts.shape[0]):
            self.counts[channel] += np.bincount(flat[:, channel], minlength=256)

    def to_dict(self) -> dict:
        total = self.counts.sum(axis=1)
        if not total.any():
            return {}
        values = np.arange(256, dtype=np.float64)
        mean = self.counts @ values / total
        var = (self.counts * np.square(values[None, :] - mean[:, None])).sum(axis=1) / total
        seen = np.flatnonzero(self.counts.sum(axis=0))
        return {"mean": [_short(v) for v in mean], "std": [_short(v) for v in np.sqrt(var)],
                "min": float(seen[0]), "max": float(seen[-1]), "per": "channel"}


def is_image(info: DatasetInfo) -> bool:
    """uint8 features of shape (H, W, C): decoded images (images.py)."""
    return np.dtype(info.feature_dtype) == np.uint8 and len(info.feature_shape) == 3


def running_stats(info: DatasetInfo) -> RunningStats | ChannelStats | None:
    """What an import gathers for ``info``'s features: per feature for floats, per channel for images."""
    if np.dtype(info.feature_dtype).kind == "f":
        return RunningStats()
    if is_image(info):
        return ChannelStats(int(info.feature_shape[-1]))
    return None  # token ids


def feature_stats(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) as float32 arrays shaped like ``info.feature_shape`` (images: (C,)); None when none are stored.

    A feature that never varies has std 0: divide by ``np.where(std > 0, std, 1)``.
    """
    stats = info.feature_stats
    if not stats or "mean" not in stats or "std" not in stats:
        return None
    shape = tuple(info.feature_shape[-1:]) if stats.get("per") == "channel" else tuple(info.feature_shape)
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
    if stats.get("per") == "channel":
        return (f"train split, per channel ({mean.size}): mean {', '.join(f'{v:.4g}' for v in mean)}, "
                f"std {', '.join(f'{v:.4g}' for v in std)}, min {stats['min']:.4g}, max {stats['max']:.4g}")
    constant = int((std == 0).sum())
    return (f"train split, {mean.size} values: mean {mean.min():.4g} to {mean.max():.4g}, "
            f"std {std.min():.4g} to {std.max():.4g} ({constant} constant), "
            f"min {stats['min']:.4g}, max {stats['max']:.4g}")
