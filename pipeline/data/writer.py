"""Streaming writes: rows go to Parquet files in a staging folder as they arrive; commit renames.

Every file of the split stays open until ``commit()``: the row counts and the fingerprint are
only known at the end, and they go into each file's footer (``layout.footer_metadata``), so
no byte of data is ever written twice. Memory is bounded by one row group per split plus
the chunk being appended.
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.fingerprint import Fingerprint
from pipeline.data.layout import Layout, arrow_schema, footer_metadata
from pipeline.data.stats import RunningStats
from pipeline.data.tensors import to_arrow
from pipeline.data.validate import DataError


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class _SplitWriter:
    """One split: full row groups are written as they fill, files roll over at a fixed row count."""

    def __init__(self, owner: DatasetWriter, split: str):
        self.owner, self.split = owner, split
        self.folder = fsx.join(owner.staging, split)
        owner.fs.create_dir(self.folder)
        self.files: list[pq.ParquetWriter] = []
        self.rows_in_file = owner.rows_per_file  # forces a new file on the first write
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.rows = 0

    def append(self, x: np.ndarray, y: np.ndarray) -> None:
        self.pending.append((x, y))
        self.pending_rows += len(x)
        self.rows += len(x)
        if self.pending_rows >= self.owner.rows_per_group:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self.pending_rows:
            return
        if len(self.pending) == 1:
            x, y = self.pending[0]
        else:
            x = np.concatenate([p[0] for p in self.pending])
            y = np.concatenate([p[1] for p in self.pending])
        group, per_file = self.owner.rows_per_group, self.owner.rows_per_file
        pos = 0
        while pos < len(x):
            if self.rows_in_file == per_file:
                self._new_file()
            room = per_file - self.rows_in_file
            left = len(x) - pos
            take = min(room, left if final else left // group * group)
            if take == 0:
                break
            table = pa.Table.from_arrays([to_arrow(x[pos:pos + take]), to_arrow(y[pos:pos + take])],
                                         schema=self.owner.schema)
            self.files[-1].write_table(table, row_group_size=group)
            self.rows_in_file += take
            pos += take
        self.pending = [(x[pos:], y[pos:])] if pos < len(x) else []
        self.pending_rows = len(x) - pos

    def _new_file(self) -> None:
        owner = self.owner
        path = fsx.join(self.folder, part_name(len(self.files)))
        label = owner.template.label_column
        self.files.append(pq.ParquetWriter(path, owner.schema, filesystem=owner.fs, compression="snappy",
                                           use_dictionary=[label], write_statistics=[label]))
        self.rows_in_file = 0


class DatasetWriter:
    """``append(split, x, y)`` chunks in row order, then ``commit()``; ``abort()`` leaves nothing.

    ``template`` fixes the name, task, columns, shapes and dtypes; rows, fingerprint and the
    train split's feature statistics are filled in from what was appended.
    """

    def __init__(self, store, template: DatasetInfo, overwrite: bool = False, layout: Layout | None = None):
        self.store, self.template, self.overwrite = store, template, overwrite
        self.layout = layout or Layout()
        self.fs = store.fs
        self.schema = arrow_schema(template)
        self.rows_per_group = self.layout.rows_per_group(template.row_bytes)
        self.rows_per_file = self.rows_per_group * self.layout.groups_per_file(template.row_bytes)
        self.staging = fsx.join(store.base, f".{template.name}.tmp-{uuid.uuid4().hex[:12]}")
        self.fs.create_dir(self.staging)
        self.splits: dict[str, _SplitWriter] = {}
        self.fingerprint = Fingerprint()
        self._x_dtype, self._y_dtype = np.dtype(template.feature_dtype), np.dtype(template.label_dtype)
        self.stats = RunningStats() if self._x_dtype.kind == "f" else None  # none for token ids

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add_split(self, split: str) -> None:
        """Declare a split that may receive no rows (commit then reports it as empty)."""
        if split not in self.splits:
            self.splits[split] = _SplitWriter(self, split)

    def append(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        t = self.template
        if x.shape[1:] != t.feature_shape or y.shape[1:] != t.label_shape or len(x) != len(y):
            raise DataError(f"split '{split}': rows of shape {x.shape[1:]} / {y.shape[1:]} do not match the "
                            f"dataset's {t.feature_shape} / {t.label_shape}")
        x = np.ascontiguousarray(x, dtype=self._x_dtype)
        y = np.ascontiguousarray(y, dtype=self._y_dtype)
        self.add_split(split)
        self.fingerprint.update(split, x, y)
        if split == "train" and self.stats is not None:
            self.stats.update(x)
        self.splits[split].append(x, y)

    def commit(self) -> DatasetInfo:
        """Write the footers with the final metadata and rename the staging folder into place."""
        for name, writer in self.splits.items():
            if writer.rows == 0:
                raise DataError(f"{self.template.source or self.template.name}: the {name} split is empty")
        for writer in self.splits.values():
            writer.flush(final=True)
        info = dataclasses.replace(self.template, rows={k: w.rows for k, w in self.splits.items()},
                                   fingerprint=self.fingerprint.hexdigest(),
                                   feature_stats=self.stats.to_dict() if self.stats is not None else {})
        metadata = footer_metadata(info)
        for writer in self.splits.values():
            for file in writer.files:
                file.add_key_value_metadata(metadata)
                file.close()
            writer.files = []
        self.store.install(self.staging, info.name, self.overwrite)
        return info

    def abort(self) -> None:
        for writer in self.splits.values():
            for file in writer.files:
                try:
                    file.close()
                except (OSError, pa.ArrowException):
                    pass
        fsx.remove_tree(self.fs, self.staging)
