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
    if split.x.dtype.kind == "f":
        bad = ~np.isfinite(split.x.reshape(len(split.x), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: row {int(np.argmax(bad))} has a NaN or infinite feature value")
    if task == "regression" and split.y.dtype.kind == "f":
        bad = ~np.isfinite(split.y.reshape(len(split.y), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: row {int(np.argmax(bad))} has a NaN or infinite label")
    if task in ("classification", "language_modeling") and num_classes:
        if split.y.dtype.kind not in "iu":
            raise DataError(f"{where}: class labels must be integers, not {split.y.dtype}")
        flat = split.y.reshape(len(split.y), -1)
        bad = ((flat < 0) | (flat >= num_classes)).any(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{where}: row {row} has label {flat[row].max()} outside the {num_classes} classes"
            )
