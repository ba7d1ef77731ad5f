"""Import arrays or a DataFrame from Python, through the same code as ``pipeline data import``.

``import_arrays`` is the ``.npz`` path (arrays in memory); ``import_dataframe`` is the table
path (a DataFrame is a table already: its columns are read like a Parquet file's, list columns
and text labels included). Same checks, label ids, statistics and atomic install; errors are
``DataError`` with one line naming ``dataframe``, ``test_df`` or ``validation_df``, the column and
the row. ``task`` is ``--task`` (labels.py); a frame's column names are stored as the dataset's
``feature_names`` and ``target``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.imports import check_name, check_split_args, import_loaded, import_tables
from pipeline.data.labels import check_task_choice, settle_loaded_task
from pipeline.data.layout import Layout
from pipeline.data.sources import from_arrays
from pipeline.data.store import Store
from pipeline.data.tables import Chunk, check_same, check_unique
from pipeline.data.validate import DataError


def import_arrays(store: Store, name: str, x, y, x_test=None, y_test=None, *, test_fraction: float = 0.2,
                  seed: int = 0, overwrite: bool = False, task: str | None = None) -> DatasetInfo:
    """Features ``x`` (N, ...) and labels ``y`` (N,) as dataset ``name``; a seeded test split unless given.

    ``task`` "classification" or "regression" says what ``y`` is (None: from its values; refused when
    integers could be either)."""
    check_name(store, name, overwrite)
    check_split_args(test_fraction, seed)
    check_task_choice(task)
    arrays = {"x": x, "y": y}
    if x_test is not None or y_test is not None:
        arrays.update({k: v for k, v in (("x_test", x_test), ("y_test", y_test)) if v is not None})
    loaded = settle_loaded_task("python:arrays", from_arrays("arrays", {k: np.asarray(v) for k, v in arrays.items()}),
                                task)
    return import_loaded(store, loaded, "python:arrays", name, test_fraction, seed, overwrite, None)


def import_dataframe(store: Store, name: str, df, target: str, *, features: list[str] | None = None,
                     test_df=None, validation_df=None, test_fraction: float = 0.2, seed: int = 0,
                     overwrite: bool = False, task: str | None = None) -> DatasetInfo:
    """A pandas DataFrame (or a pyarrow Table) as dataset ``name``, ``target`` its label column.

    ``features`` picks columns (default: all but the target); ``test_df`` is the test split,
    else a seeded ``test_fraction`` of the rows; ``validation_df`` is a stored validation split
    (a run then selects on it instead of carving one from train). ``task`` as ``import_arrays``.
    """
    check_name(store, name, overwrite)
    check_split_args(test_fraction, seed)
    check_task_choice(task)
    features = None if features is None else [str(c) for c in features]  # pandas allows non-text names
    frames = {"dataframe": as_table("dataframe", df)}
    for where, frame in (("test_df", test_df), ("validation_df", validation_df)):
        if frame is not None:
            frames[where] = as_table(where, frame)
    layout = Layout()
    tables = FrameTables(frames, layout.read_block_bytes)
    return import_tables(store, tables, name, str(target), features, test_fraction, seed, overwrite, layout,
                         task=task)


def as_table(where: str, df) -> pa.Table:
    """A pandas DataFrame or pyarrow Table as a Table with unique column names; one line naming ``where``."""
    if isinstance(df, pa.Table):
        table = df
    else:
        columns = [str(c) for c in getattr(df, "columns", [])]
        twice = next((c for i, c in enumerate(columns) if c in columns[:i]), None)
        if twice is not None:  # pyarrow would refuse them too, less clearly
            raise DataError(f"{where}: column '{twice}' appears more than once; column names must be unique")
        try:
            table = pa.Table.from_pandas(df, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise DataError(f"{where}: cannot convert to Arrow: {fsx.first_line(exc)}") from None
    check_unique(where, table.schema)
    return table


SPLIT_OF_FRAME = {"dataframe": "train", "test_df": "test", "validation_df": "validation"}


class FrameTables:
    """In-memory tables read like Parquet files: ``dataframe`` is the train split, ``test_df`` the test,
    ``validation_df`` the validation split."""

    kind = "parquet"

    def __init__(self, frames: dict[str, pa.Table], block_bytes: int):
        self.source = "dataframe"
        self.frames, self.block_bytes = frames, block_bytes
        self.paths = list(frames)
        first = frames["dataframe"]
        self.columns = first.schema.names
        for where in frames:
            if where != "dataframe":
                check_same("dataframe", first.schema, where, frames[where].schema, typed=True)
        self.splits = {SPLIT_OF_FRAME[where]: [where] for where in SPLIT_OF_FRAME if where in frames}

    def pipeline_info(self) -> None:
        return None

    def column_type(self, name: str) -> pa.DataType:
        return self.frames["dataframe"].schema.field(name).type

    def chunks(self, columns: list[str], features: list[str] | None = None,
               paths: list[str] | None = None) -> Iterator[Chunk]:
        for path in self.paths if paths is None else paths:
            table = self.frames[path].select(columns)
            rows = max(1, self.block_bytes // max(1, table.nbytes // max(1, table.num_rows)))
            first = 0
            for batch in table.to_batches(max_chunksize=rows):
                yield Chunk(path, first, batch)
                first += batch.num_rows
