"""Checks that make bad data fail at import with one line naming where it is bad."""

from __future__ import annotations

import numpy as np

from pipeline.data.dataset import Split
from pipeline.errors import PipelineError


class DataError(PipelineError):
    """Data that cannot be stored or read as it is."""


def check_split(where: str, split: Split, task: str, num_classes: int) -> None:
    """Raise DataError naming ``where`` (a file or split) and the first bad row."""
    if len(split.x) != len(split.y):
        raise DataError(
            f"{where}: features have {len(split.x)} rows but labels have {len(split.y)}"
        )
    if len(split) == 0:
        raise DataError(f"{where}: the split is empty")
    check_rows(where, split.x, split.y, task, num_classes)


def check_rows(where: str, x: np.ndarray, y: np.ndarray, task: str, num_classes: int,
               first_row: int = 0) -> None:
    """Finite features (and regression labels), class ids in range; rows numbered from ``first_row``.

    Vectorised: the common case (nothing wrong) is one pass over each array.
    """
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        raise DataError(f"{where}: row {first_row + int(np.argmax(bad))} has a NaN or infinite feature value")
    if task == "regression" and y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        raise DataError(f"{where}: row {first_row + int(np.argmax(bad))} has a NaN or infinite label")
    if task in ("classification", "language_modeling") and num_classes and len(y):
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: class labels must be integers, not {y.dtype}")
        if y.min() < 0 or y.max() >= num_classes:
            flat = y.reshape(len(y), -1)
            bad = ((flat < 0) | (flat >= num_classes)).any(axis=1)
            row = int(np.argmax(bad))
            value = flat[row][(flat[row] < 0) | (flat[row] >= num_classes)][0]
            raise DataError(
                f"{where}: row {first_row + row} has label {value} outside the {num_classes} classes"
            )
