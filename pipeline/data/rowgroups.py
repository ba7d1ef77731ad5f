"""A split's row groups, checked: every file's footer is read once, its schema and metadata
compared with the dataset's, and each row group's values checked as it is read.

This is where strictness lives for every reader (device-resident, streaming, verify): a file
of another schema, a file whose metadata disagrees, a truncated file, a page whose checksum
fails or NaN features are errors naming the file (and row) as soon as they are met.

Readers take no lock. The index remembers the identity of the dataset's folder when it opened
and checks it after every read: a dataset replaced meanwhile (``--overwrite``) is
``DatasetReplaced``, never rows of two imports mixed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.layout import arrow_schema, info_from_metadata
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError, check_rows


class DatasetReplaced(DataError):
    """The dataset's folder was replaced (an ``--overwrite`` import) while it was being read."""


@dataclass(frozen=True)
class Group:
    """One row group: which file, its index in the file, its rows, and its first row in the file."""

    file: int
    index: int
    rows: int
    first_row: int


@dataclass
class SplitIndex:
    store: object
    info: DatasetInfo
    split: str
    paths: list[str]
    footers: list[pq.FileMetaData]
    groups: list[Group]
    identity: tuple[int, int] | None = None

    @property
    def file_rows(self) -> list[int]:
        return [int(f.num_rows) for f in self.footers]

    @property
    def rows(self) -> int:
        return sum(self.file_rows)

    @property
    def schema(self) -> pa.Schema:
        return arrow_schema(self.info, with_metadata=True)

    @classmethod
    def open(cls, store, name: str, split: str) -> SplitIndex:
        """Read and check every footer of ``name/split``; raises DataError naming the bad file."""
        for attempt in range(3):
            try:
                return cls._open(store, name, split)
            except DatasetReplaced:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open(cls, store, name: str, split: str) -> SplitIndex:
        identity = store.identity(name)
        try:
            index = cls._read_footers(store, name, split)
        except DataError:
            _check_unchanged(store, name, identity)  # an error met in a half-replaced dataset: read again
            raise
        index.identity = identity
        index.check_unchanged()
        return index

    def check_unchanged(self) -> None:
        """Raise ``DatasetReplaced`` if the dataset's folder is not the one this index opened."""
        _check_unchanged(self.store, self.info.name, self.identity)

    @classmethod
    def _read_footers(cls, store, name: str, split: str) -> SplitIndex:
        info = store.info(name)
        paths = store.files(name, split)
        if not paths:
            known = ", ".join(info.rows) or "none"
            raise DataError(f"dataset '{name}' has no split '{split}' (splits: {known})")
        footers = [read_footer(store, path, info) for path in paths]
        groups = []
        for f, footer in enumerate(footers):
            first = 0
            for g in range(footer.num_row_groups):
                rows = int(footer.row_group(g).num_rows)
                groups.append(Group(f, g, rows, first))
                first += rows
        index = cls(store, info, split, paths, footers, groups)
        if index.rows == 0:
            raise DataError(f"{store.path(name, split)}: the {split} split is empty")
        if split in info.rows and index.rows != info.rows[split]:
            raise DataError(f"{store.path(name, split)}: {index.rows} rows in the files but the metadata "
                            f"records {info.rows[split]}")
        return index

    def read(self, group: Group) -> tuple[np.ndarray, np.ndarray]:
        """One row group as numpy (features, labels), values checked."""
        info, path = self.info, self.paths[group.file]
        try:
            with self.store.fs.open_input_file(path) as handle:
                table = pq.ParquetFile(handle, metadata=self.footers[group.file],
                                       page_checksum_verification=True).read_row_group(
                    group.index, columns=[info.feature_column, info.label_column], use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            self.check_unchanged()
            raise DataError(f"{path}: cannot read row group {group.index} ({fsx.first_line(exc)})") from None
        self.check_unchanged()
        x, y = to_numpy(table.column(0)), to_numpy(table.column(1))
        if len(x) != group.rows:
            raise DataError(f"{path}: row group {group.index} has {len(x)} rows, its footer says {group.rows}")
        check_rows(path, x, y, info.task, info.num_classes, first_row=group.first_row)
        return x, y


def _check_unchanged(store, name: str, identity: tuple[int, int] | None) -> None:
    if identity is not None and store.identity(name) != identity:
        raise DatasetReplaced(f"dataset '{name}' in {store.root} was replaced while it was being read "
                              "(an --overwrite import); read it again")


def read_footer(store, path: str, info: DatasetInfo) -> pq.FileMetaData:
    """The file's footer, after checking its schema and metadata against the dataset's."""
    try:
        with store.fs.open_input_file(path) as handle:
            footer = pq.read_metadata(handle)
        schema = footer.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({fsx.first_line(exc)})") from None
    check_schema(path, schema, info)
    check_metadata(path, schema.metadata or {}, info)
    return footer


def check_schema(path: str, schema: pa.Schema, info: DatasetInfo) -> None:
    expected = arrow_schema(info)
    if schema.names != expected.names:
        raise DataError(f"{path}: columns {', '.join(schema.names)} but the dataset has "
                        f"{', '.join(expected.names)}")
    for have, want in zip(schema, expected):
        if have.type != want.type:
            raise DataError(f"{path}: column '{have.name}' is {_describe(have.type)} but the dataset has "
                            f"{_describe(want.type)}")


def _describe(t: pa.DataType) -> str:
    if isinstance(t, pa.FixedShapeTensorType):
        return f"{t.value_type} tensor {list(t.shape)}"
    return str(t)


def check_metadata(path: str, metadata: dict[bytes, bytes], info: DatasetInfo) -> None:
    mine = info_from_metadata(path, metadata)
    ours, theirs = dataclasses.asdict(info), dataclasses.asdict(mine)
    differ = [k for k in ours if ours[k] != theirs.get(k)]
    if differ:
        k = differ[0]
        raise DataError(f"{path}: metadata disagrees with the dataset's ({k} is {theirs.get(k)!r}, "
                        f"the dataset's is {ours[k]!r})")
