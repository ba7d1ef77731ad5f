"""How a split is cut into files and row groups, and the Arrow schema every file of a dataset has.

Row groups are the unit of reading and of the streaming reader's shuffle. 8 MiB (uncompressed)
is large enough that the per-group cost of Parquet (footer lookup, page headers, one read call)
stays under a percent of the decode time, and small enough that a 2 GB split has ~250 groups
to shuffle and a shuffle buffer of 16k rows mixes several of them. Files hold 256 MiB: few
enough to list quickly on an object store, small enough to copy and verify one at a time.
Sizes are counted in rows of the in-memory (uncompressed) layout, so every file of a split but
the last has the same number of rows and groups, whatever the compression.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.data.dataset import DatasetInfo
from pipeline.data.validate import DataError

METADATA_KEY = b"pipeline"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Layout:
    row_group_bytes: int = 8 * MIB
    file_bytes: int = 256 * MIB
    # The chunk a CSV or Parquet source is read in. pyarrow's CSV reader reads up to 32 blocks ahead
    # on a background thread, so this bounds an import's memory at about 32 x 4 MiB plus a row group.
    read_block_bytes: int = 4 * MIB

    @classmethod
    def from_mib(cls, row_group_mb: float, file_mb: float, block_mb: float) -> Layout:
        """Sizes in MiB as given on the command line: each a finite number above zero."""
        for flag, value in (("--row-group-mb", row_group_mb), ("--file-mb", file_mb), ("--block-mb", block_mb)):
            if not math.isfinite(value) or value <= 0:
                raise DataError(f"{flag} must be a positive number of MiB, not {value}")
        return cls(max(1, int(row_group_mb * MIB)), max(1, int(file_mb * MIB)), max(1, int(block_mb * MIB)))

    def rows_per_group(self, row_bytes: int) -> int:
        return max(1, self.row_group_bytes // max(1, row_bytes))

    def groups_per_file(self, row_bytes: int) -> int:
        return max(1, self.file_bytes // (self.rows_per_group(row_bytes) * max(1, row_bytes)))


def column_type(dtype: str, shape: tuple[int, ...]) -> pa.DataType:
    value = pa.from_numpy_dtype(np.dtype(dtype))
    return pa.fixed_shape_tensor(value, list(shape)) if shape else value


def arrow_schema(info: DatasetInfo, with_metadata: bool = False) -> pa.Schema:
    """The schema of every file of ``info``'s dataset; with the metadata when asked."""
    schema = pa.schema([
        pa.field(info.feature_column, column_type(info.feature_dtype, info.feature_shape), nullable=False),
        pa.field(info.label_column, column_type(info.label_dtype, info.label_shape), nullable=False),
    ])
    return schema.with_metadata({METADATA_KEY: info.to_json().encode()}) if with_metadata else schema


def footer_metadata(info: DatasetInfo) -> dict[bytes, bytes]:
    """Key-value metadata that makes a still-open file read back with ``info`` as its schema metadata.

    Parquet files written by Arrow carry their Arrow schema, base64 IPC-serialised, under
    ``ARROW:schema``; readers take the schema metadata from there. Replacing it before the
    footer is written lets an import write rows first and the metadata (row counts,
    fingerprint) once they are known, without rewriting any data.
    """
    schema = arrow_schema(info, with_metadata=True)
    return {b"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()),
            METADATA_KEY: info.to_json().encode()}


def info_from_metadata(path: str, metadata: dict[bytes, bytes]) -> DatasetInfo:
    """The ``DatasetInfo`` a file's schema metadata carries; a missing or unreadable one names the file."""
    if METADATA_KEY not in metadata:
        raise DataError(f"{path}: no '{METADATA_KEY.decode()}' metadata in the schema")
    try:
        info = DatasetInfo.from_json(metadata[METADATA_KEY])
        arrow_schema(info)  # columns, dtypes and shapes make a schema
    except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"{path}: unreadable '{METADATA_KEY.decode()}' metadata ({reason})") from None
    return info
