"""numpy <-> Arrow columns: tensors as ``arrow.fixed_shape_tensor``, scalars as plain columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_arrow(values: np.ndarray) -> pa.Array:
    """One row per leading index; rank > 1 becomes a fixed-shape tensor column."""
    values = np.ascontiguousarray(values)
    if values.ndim == 1:
        return pa.array(values)
    if values.shape[0] == 0:  # from_numpy_ndarray refuses empty arrays
        tensor = pa.fixed_shape_tensor(pa.from_numpy_dtype(values.dtype), list(values.shape[1:]))
        return pa.ExtensionArray.from_storage(tensor, pa.array([], type=tensor.storage_type))
    return pa.FixedShapeTensorArray.from_numpy_ndarray(values)


def to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Columnar conversion without a Python loop per row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column.type, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    return column.to_numpy(zero_copy_only=False)
