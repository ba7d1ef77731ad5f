"""Feature columns of a table source as one array per chunk.

A number or true/false column is one value a row; an ``arrow.fixed_shape_tensor`` column keeps
its shape; a list column (``list``, ``large_list``, ``fixed_size_list``, nested) whose lists all
have one length L is a tensor of shape (L,) (nested: (L, M, ...)). One column keeps its shape;
several are flattened and concatenated, in the order given, into one vector a row. Features are
float32, except one integer list column alone: it stays int32, so it can be token ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.tables import Chunk
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError


def pick_features(where: str, columns: list[str], target: str, requested: list[str] | None) -> list[str]:
    """The feature columns: ``requested`` in its order, else every column but the target."""
    if requested is None:
        names = [c for c in columns if c != target]
        if not names:
            raise DataError(f"{where}: no feature columns besides the target '{target}'")
        return names
    if not requested:
        raise DataError(f"{where}: --features names no column")
    for name in requested:
        if name not in columns:
            raise DataError(f"{where}: no feature column '{name}' (columns: {', '.join(columns)})")
        if name == target:
            raise DataError(f"{where}: feature column '{name}' is the target")
    if len(set(requested)) != len(requested):
        twice = next(n for n in requested if requested.count(n) > 1)
        raise DataError(f"{where}: feature column '{twice}' is named twice")
    return list(requested)


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def leaf_type(t: pa.DataType) -> pa.DataType:
    while is_list(t):
        t = t.value_type
    return t


@dataclass
class FeaturePlan:
    """Which columns, the shape each has in a row (``()`` for a scalar), and the stored shape and dtype."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, tables, names: list[str]) -> FeaturePlan:
        """Shapes from the schema; a variable-length list column's from its first row."""
        if tables.kind == "csv":  # CSV values are scalars, parsed as float32 while read
            return cls(names, [()] * len(names), (len(names),), "float32")
        types = [tables.column_type(n) for n in names]
        shapes = [column_shape(tables, n, t) for n, t in zip(names, types)]
        if len(names) == 1:
            shape = shapes[0] or (1,)
            tokens = is_list(types[0]) and pa.types.is_integer(leaf_type(types[0]))
            return cls(names, shapes, shape, "int32" if tokens else "float32")
        return cls(names, shapes, (sum(int(np.prod(s)) for s in shapes),), "float32")

    def array(self, chunk: Chunk) -> np.ndarray:
        """The chunk's features as (rows, *shape) of ``dtype``; one line names the file, row and column at fault."""
        batch, path, rows = chunk.batch, chunk.path, chunk.batch.num_rows
        columns = [batch.column(batch.schema.get_field_index(n)) for n in self.names]
        for name, column in zip(self.names, columns):
            if column.null_count:
                row = chunk.first_row + int(np.argmax(to_numpy(pc.is_null(column))))
                raise DataError(f"{path}: column '{name}' row {row} is empty")
        parts = [column_values(chunk, n, c, s) for n, c, s in zip(self.names, columns, self.shapes)]
        if np.dtype(self.dtype).kind in "iu":  # one integer column: token ids (or a stored integer tensor)
            return _integers(chunk, self.names[0], parts[0], np.dtype(self.dtype))
        flat = [p.reshape(rows, -1) for p in parts]
        x = flat[0] if len(flat) == 1 else np.concatenate(flat, axis=1)
        with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused just below
            x = x.astype(self.dtype, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            row = int(np.argmax(~finite.all(axis=1)))
            owners = np.repeat(np.arange(len(flat)), [p.shape[1] for p in flat])
            name = self.names[owners[int(np.argmax(~finite[row]))]]
            raise DataError(f"{path}: row {chunk.first_row + row} column '{name}' has a NaN or infinite value")
        return x.reshape(rows, *self.shape)


def column_shape(tables, name: str, t: pa.DataType) -> tuple[int, ...]:
    where = tables.paths[0]
    if isinstance(t, pa.FixedShapeTensorType):
        return tuple(int(d) for d in t.shape)
    if is_list(t):
        if not is_number(leaf_type(t)):
            raise DataError(f"{where}: feature column '{name}' is not numeric ({t})")
        return _first_row_shape(tables, name)
    if is_number(t):
        return ()
    raise DataError(f"{where}: feature column '{name}' is not numeric ({t})")


def _first_row_shape(tables, name: str) -> tuple[int, ...]:
    """The list lengths of the column's first row: every other row must have the same."""
    for chunk in tables.chunks([name]):
        if chunk.batch.num_rows == 0:
            continue
        value, shape = chunk.batch.column(0).slice(0, 1), []
        while is_list(value.type):
            if value.null_count:
                raise DataError(f"{chunk.path}: column '{name}' row {chunk.first_row} is empty")
            shape.append(int(pc.list_value_length(value)[0].as_py()))
            if shape[-1] == 0:
                raise DataError(f"{chunk.path}: column '{name}' row {chunk.first_row} is an empty list")
            value = value.flatten().slice(0, 1)
        return tuple(shape)
    raise DataError(f"{tables.paths[0]}: no rows")


def column_values(chunk: Chunk, name: str, column: pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """One column of a chunk as (rows, *shape); list lengths checked level by level."""
    if isinstance(column.type, pa.FixedShapeTensorType) or not is_list(column.type):
        return to_numpy(column)
    values, outer = column, 1
    for size in shape:
        lengths = to_numpy(pc.fill_null(pc.list_value_length(values), -1))
        bad = lengths != size
        if bad.any():
            i = int(np.argmax(bad))
            row = chunk.first_row + i // outer
            found = "an empty list" if lengths[i] < 0 else f"a list of {lengths[i]}"
            raise DataError(f"{chunk.path}: list column '{name}' row {row} has {found}, not {size} like its "
                            "first row (lists in a column must have one length)")
        values, outer = values.flatten(), outer * size
    if values.null_count:
        row = chunk.first_row + int(np.argmax(to_numpy(pc.is_null(values)))) // outer
        raise DataError(f"{chunk.path}: list column '{name}' row {row} has an empty value")
    return to_numpy(values).reshape(len(column), *shape)


def _integers(chunk: Chunk, name: str, ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Integer features as ``dtype``, refusing values it cannot hold rather than wrapping them."""
    info = np.iinfo(dtype)
    if ids.size and ids.dtype != dtype and (ids.min() < info.min or ids.max() > info.max):
        flat = ids.reshape(len(ids), -1)
        bad = ((flat < info.min) | (flat > info.max)).any(axis=1)
        row = int(np.argmax(bad))
        raise DataError(f"{chunk.path}: column '{name}' row {chunk.first_row + row} has a value outside "
                        f"{dtype} (token ids must fit)")
    return ids.astype(dtype, copy=False)
