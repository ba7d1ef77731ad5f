"""Table sources read in chunks: one or many ``.csv`` or ``.parquet`` files on any filesystem.

CSV is read with pyarrow's streaming reader (feature columns parsed as float32, the target as
text), Parquet a batch of row groups at a time; memory stays at one block per reader whatever
the file size. Every chunk comes with its file and the row number of its first row there, so
errors can name both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.layout import METADATA_KEY, Layout
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError

SUFFIXES = (".csv", ".parquet")
_CSV_VALUE_ERROR = re.compile(r"In CSV column #(\d+): .*invalid value '(.*)'")


@dataclass
class Chunk:
    path: str
    first_row: int
    batch: pa.RecordBatch


class TableFiles:
    """The files of a table source, all of one kind and one set of columns."""

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
        self.columns = self.schemas[0].names
        for path, schema in zip(self.paths[1:], self.schemas[1:]):
            self._check_same(path, schema)

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

    def _check_same(self, path: str, schema: pa.Schema) -> None:
        first, reference = self.paths[0], self.schemas[0]
        if schema.names != reference.names:
            raise DataError(f"{path}: columns {', '.join(schema.names)} differ from {first}'s "
                            f"{', '.join(reference.names)}")
        if self.kind == "parquet":
            for have, want in zip(schema, reference):
                if have.type != want.type:
                    raise DataError(f"{path}: column '{have.name}' is {have.type} but {want.type} in {first}")

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

    def chunks(self, columns: list[str], features: list[str] | None = None) -> Iterator[Chunk]:
        """Record batches of ``columns`` from every file in order; CSV ``features`` parse as float32."""
        for path in self.paths:
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
                file = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
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


def feature_array(chunk: Chunk, names: list[str], keep_dtype: bool) -> np.ndarray:
    """Feature columns of a chunk as one array: one tensor column keeps its shape, else a float32 row."""
    batch, path = chunk.batch, chunk.path
    columns = [batch.column(batch.schema.get_field_index(n)) for n in names]
    for name, column in zip(names, columns):
        if column.null_count:
            row = chunk.first_row + int(np.argmax(to_numpy(pc.is_null(column))))
            raise DataError(f"{path}: column '{name}' row {row} is empty")
    if len(columns) == 1 and isinstance(columns[0].type, pa.FixedShapeTensorType):
        x = to_numpy(columns[0])
        return x if keep_dtype else x.astype(np.float32, copy=False)
    parts = []
    for name, column in zip(names, columns):
        t = column.type
        if isinstance(t, pa.FixedShapeTensorType):
            parts.append(to_numpy(column).reshape(batch.num_rows, -1).astype(np.float32, copy=False))
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            parts.append(to_numpy(pc.cast(column, pa.float32())).reshape(-1, 1))
        else:
            raise DataError(f"{path}: feature column '{name}' is not numeric ({t})")
    x = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    if not np.isfinite(x).all():
        row = int(np.argmax(~np.isfinite(x).all(axis=1)))
        col = int(np.argmax(~np.isfinite(x[row])))
        where = f" column '{names[col]}'" if len(parts) == len(x[row]) else ""
        raise DataError(f"{path}: row {chunk.first_row + row}{where} has a NaN or infinite value")
    return x


def feature_shape(files: TableFiles, names: list[str]) -> tuple[int, ...]:
    """The shape of one example's features, known from the schema before any row is read."""
    types = [files.column_type(n) for n in names]
    if len(types) == 1 and isinstance(types[0], pa.FixedShapeTensorType):
        return tuple(int(d) for d in types[0].shape)
    width = 0
    for name, t in zip(names, types):
        if isinstance(t, pa.FixedShapeTensorType):
            width += int(np.prod(t.shape))
        elif files.kind == "csv" or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            width += 1
        else:
            raise DataError(f"{files.paths[0]}: feature column '{name}' is not numeric ({t})")
    return (width,)
