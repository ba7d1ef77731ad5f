"""Table sources read in chunks: one or many ``.csv`` or ``.parquet`` files on any filesystem.

CSV is read with pyarrow's streaming reader (feature columns parsed as float32, the target as
text), Parquet a batch of row groups at a time; memory stays at one block per reader whatever
the file size. Every chunk comes with its file and the row number of its first row there, so
errors can name both. Files of a folder or glob source that name a split (splits.py) keep it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.layout import METADATA_KEY, Layout
from pipeline.data.splits import group_by_split
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError

SUFFIXES = (".csv", ".parquet")
_CSV_VALUE_ERROR = re.compile(r"In CSV column #(\d+): .*invalid value '(.*)'")


@dataclass
class Chunk:
    path: str
    first_row: int
    batch: pa.RecordBatch


class Tables(Protocol):
    """What an import reads from a table source: ``TableFiles`` here, ``FrameTables`` (frames.py)."""

    source: str
    kind: str  # "csv" (untyped text, features parsed as float32) or "parquet" (typed columns)
    paths: list[str]  # what errors name: files, or the frames' names
    columns: list[str]
    splits: dict[str, list[str]]

    def pipeline_info(self) -> DatasetInfo | None: ...

    def column_type(self, name: str) -> pa.DataType: ...

    def chunks(self, columns: list[str], features: list[str] | None = None,
               paths: list[str] | None = None) -> Iterator[Chunk]: ...


def check_unique(path: str, schema: pa.Schema) -> None:
    """Column names are how features and the target are picked: two of one name are ambiguous."""
    seen: set[str] = set()
    for name in schema.names:
        if name in seen:
            raise DataError(f"{path}: column '{name}' appears more than once; column names must be unique")
        seen.add(name)


def check_same(first: str, reference: pa.Schema, path: str, schema: pa.Schema, typed: bool) -> None:
    """Every file of a source has the first file's columns (and, when ``typed``, their types)."""
    if schema.names != reference.names:
        raise DataError(f"{path}: columns {', '.join(schema.names)} differ from {first}'s "
                        f"{', '.join(reference.names)}")
    if typed:
        for have, want in zip(schema, reference):
            if have.type != want.type:
                raise DataError(f"{path}: column '{have.name}' is {have.type} but {want.type} in {first}")


class TableFiles:
    """The files of a table source, all of one kind and one set of columns.

    ``splits`` maps stored split names to their files (``{"train": paths}`` when the files name
    no split); ``chunks`` reads any subset of the files.
    """

    def __init__(self, source: str, layout: Layout):
        self.source, self.layout = source, layout
        self.fs, self.paths = fsx.expand(source, SUFFIXES)
        kinds = {p.rsplit(".", 1)[-1].lower() for p in self.paths}
        if len(kinds) > 1:
            raise DataError(f"{source}: mixes .csv and .parquet files; import them separately")
        self.kind = kinds.pop()
        if f".{self.kind}" not in SUFFIXES:
            raise DataError(f"{source}: unknown source type '.{self.kind}'; use .npz, .csv, .parquet or builtin:NAME")
        self.schemas = [self._schema(p) for p in self.paths]
        for path, schema in zip(self.paths, self.schemas):
            check_unique(path, schema)
        self.columns = self.schemas[0].names
        for path, schema in zip(self.paths[1:], self.schemas[1:]):
            check_same(self.paths[0], self.schemas[0], path, schema, typed=self.kind == "parquet")
        self.splits = group_by_split(source, fsx.source_folder(self.fs, source), self.paths)

    # -- what the files hold --------------------------------------------------------------

    def _schema(self, path: str) -> pa.Schema:
        try:
            if self.kind == "parquet":
                with self.fs.open_input_file(path) as handle:
                    return pq.read_schema(handle)
            with self.fs.open_input_stream(path) as stream:
                return pcsv.open_csv(stream, read_options=self._read_options()).schema
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot read: {fsx.first_line(exc)}") from None

    def pipeline_info(self) -> DatasetInfo | None:
        """The dataset metadata of Parquet files written by this pipeline, if they carry it."""
        metadata = self.schemas[0].metadata or {}
        if self.kind != "parquet" or METADATA_KEY not in metadata:
            return None
        try:
            return DatasetInfo.from_json(metadata[METADATA_KEY])
        except (ValueError, TypeError, KeyError):
            return None

    def column_type(self, name: str) -> pa.DataType:
        return self.schemas[0].field(name).type

    # -- reading ----------------------------------------------------------------------------

    def _read_options(self) -> pcsv.ReadOptions:
        return pcsv.ReadOptions(block_size=self.layout.read_block_bytes)

    def chunks(self, columns: list[str], features: list[str] | None = None,
               paths: list[str] | None = None) -> Iterator[Chunk]:
        """Record batches of ``columns`` from ``paths`` (every file) in order; CSV ``features`` parse as float32."""
        for path in self.paths if paths is None else paths:
            first = 0
            for batch in (self._parquet(path, columns) if self.kind == "parquet"
                          else self._csv(path, columns, features or [])):
                yield Chunk(path, first, batch)
                first += batch.num_rows

    def _parquet(self, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        try:
            with self.fs.open_input_file(path) as handle:
                # No pre-buffering and buffered column reads: memory stays at a batch's pages even when
                # the source's row groups are large (pre_buffer would read whole row groups ahead).
                file = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20, page_checksum_verification=True)
                meta = file.metadata
                row_bytes = max(1, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                                // max(1, meta.num_rows))
                rows = max(1, self.layout.read_block_bytes // row_bytes)
                for group in range(meta.num_row_groups):
                    yield from file.iter_batches(batch_size=rows, row_groups=[group], columns=columns,
                                                 use_threads=True)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot read: {fsx.first_line(exc)}") from None

    def _csv(self, path: str, columns: list[str], features: list[str]) -> Iterator[pa.RecordBatch]:
        types = {c: (pa.float32() if c in features else pa.string()) for c in columns}
        # Only an empty field is missing: "nan" and "inf" parse as numbers and fail the finite check by name.
        convert = pcsv.ConvertOptions(include_columns=columns, column_types=types, strings_can_be_null=True,
                                      null_values=[""])
        first = 0
        try:
            with self.fs.open_input_stream(path) as stream:
                reader = pcsv.open_csv(stream, read_options=self._read_options(), convert_options=convert)
                for batch in reader:
                    yield batch
                    first += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise self._csv_error(path, exc, first) from None
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: cannot read: {fsx.first_line(exc)}") from None

    def _csv_error(self, path: str, exc: Exception, first: int) -> DataError:
        """Name the column and row of a value that does not parse as a number."""
        found = _CSV_VALUE_ERROR.search(str(exc))
        if not found:
            return DataError(f"{path}: cannot read: {fsx.first_line(exc)}")
        column, value = self.columns[int(found.group(1))], found.group(2)
        row = self._find_value(path, column, value, first)
        at = f" row {row}" if row is not None else ""
        return DataError(f"{path}: feature column '{column}'{at} is not numeric (value '{value}')")

    def _find_value(self, path: str, column: str, value: str, first: int) -> int | None:
        for chunk in self.chunks([column]):
            if chunk.first_row + chunk.batch.num_rows <= first:
                continue
            hits = pc.equal(chunk.batch.column(0), value)
            if pc.any(hits).as_py():
                return chunk.first_row + int(np.argmax(to_numpy(pc.fill_null(hits, False))))
        return None
