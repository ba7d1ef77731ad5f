"""Device-resident or streaming: decided by the training split's size against a byte budget."""

from __future__ import annotations

from pipeline.data.dataset import DatasetInfo


def split_bytes(info: DatasetInfo, split: str = "train") -> int:
    """Bytes the split takes as numpy arrays (and on the device): rows x (features + labels)."""
    return int(info.rows.get(split, 0)) * info.row_bytes


def fits_on_device(info: DatasetInfo, max_bytes: int, split: str = "train") -> bool:
    """True when ``split`` should be loaded onto the device whole (``data.max_device_bytes``)."""
    return split_bytes(info, split) <= max_bytes
