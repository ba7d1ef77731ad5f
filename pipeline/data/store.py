"""The data store: a folder of datasets, each a folder of Parquet files per split.

Layout: ``ROOT/NAME/SPLIT/part-00000.parquet``. Every file carries the dataset's
metadata (``DatasetInfo`` as JSON) under the schema metadata key ``pipeline``, so
plain pyarrow, pandas or DuckDB read the data and the metadata cannot drift.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.dataset import DatasetInfo, Split
from pipeline.data.tensors import to_arrow, to_numpy
from pipeline.data.validate import DataError

METADATA_KEY = b"pipeline"
ROWS_PER_GROUP = 65536


def default_root() -> Path:
    return Path(os.environ.get("PIPELINE_STORE", "data"))


class Store:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / "train").is_dir()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())

    def files(self, name: str, split: str) -> list[Path]:
        return sorted((self.path(name) / split).glob("*.parquet"))

    def info(self, name: str) -> DatasetInfo:
        if not self.exists(name):
            known = ", ".join(self.names()) or "none"
            raise DataError(f"no dataset '{name}' in the store {self.root} (datasets: {known})")
        first = self.files(name, "train")
        if not first:
            raise DataError(f"{self.path(name) / 'train'}: no Parquet files")
        try:
            metadata = pq.read_schema(first[0]).metadata or {}
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{first[0]}: cannot read: {exc}") from None
        if METADATA_KEY not in metadata:
            raise DataError(f"{first[0]}: no '{METADATA_KEY.decode()}' metadata in the schema")
        return DatasetInfo.from_json(metadata[METADATA_KEY])

    def read(self, name: str, split: str) -> Split:
        """All rows of one split as numpy arrays, converted column by column."""
        info = self.info(name)
        files = self.files(name, split)
        if not files:
            raise DataError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(info.rows)})")
        try:
            table = pq.read_table(files)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.path(name) / split}: cannot read: {exc}") from None
        return Split(to_numpy(table.column(info.feature_column)), to_numpy(table.column(info.label_column)))

    def write(self, info: DatasetInfo, splits: dict[str, Split], overwrite: bool = False) -> Path:
        """Write every split into a temporary folder, then rename it into place."""
        target = self.path(info.name)
        if target.exists() and not overwrite:
            raise DataError(f"dataset '{info.name}' already exists in {self.root} (use --overwrite)")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{info.name}.", dir=self.root))
        try:
            for split_name, split in splits.items():
                (staging / split_name).mkdir()
                table = pa.table({info.feature_column: to_arrow(split.x), info.label_column: to_arrow(split.y)})
                table = table.replace_schema_metadata({METADATA_KEY: info.to_json().encode()})
                pq.write_table(table, staging / split_name / "part-00000.parquet",
                               row_group_size=ROWS_PER_GROUP)
            if target.exists():
                # Move the old dataset aside first so a failure here still leaves one of them whole.
                old = Path(tempfile.mkdtemp(prefix=f".{info.name}.old.", dir=self.root))
                os.replace(target, old / "d")
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def size_bytes(self, name: str) -> int:
        return sum(p.stat().st_size for p in self.path(name).rglob("*.parquet"))
