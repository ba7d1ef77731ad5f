"""The data store: a folder of datasets, each a folder of Parquet files per split.

Layout: ``ROOT/NAME/SPLIT/part-NNNNN.parquet``. Every file carries the dataset's metadata
(``DatasetInfo`` as JSON) under the schema metadata key ``pipeline``, so plain pyarrow, pandas
or DuckDB read the data and the metadata cannot drift. ROOT is a local folder or any URI
pyarrow's filesystem layer (or fsspec) understands: ``s3://bucket/store``, ``memory://store``.
A dataset exists once ``NAME/train/part-00000.parquet`` does; imports write elsewhere first
and rename, so a failed import leaves nothing that counts as a dataset.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.data import fs as fsx
from pipeline.data.dataset import FORMAT_VERSION, DatasetInfo, Split
from pipeline.data.layout import Layout, info_from_metadata
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError, check_rows

FIRST_FILE = "part-00000.parquet"


def default_root() -> Path:
    return Path(os.environ.get("PIPELINE_STORE", "data"))


class Store:
    """A store root: a local path, a URI, or a path inside an explicit pyarrow ``filesystem``."""

    def __init__(self, root: str | Path | None = None, filesystem: pafs.FileSystem | None = None):
        self.root = root if root is not None else default_root()
        if filesystem is not None:
            self.fs, self.base = filesystem, str(root).rstrip("/") or "/"
        else:
            self.fs, self.base = fsx.resolve(self.root)

    def path(self, name: str, split: str | None = None) -> str:
        return fsx.join(self.base, name, split or "")

    def exists(self, name: str) -> bool:
        return fsx.is_file(self.fs, fsx.join(self.path(name, "train"), FIRST_FILE))

    def names(self) -> list[str]:
        dirs = [i.path for i in fsx.children(self.fs, self.base)
                if i.type == pafs.FileType.Directory and not fsx.basename(i.path).startswith(".")]
        if not dirs:
            return []
        firsts = self.fs.get_file_info([fsx.join(d, "train", FIRST_FILE) for d in dirs])
        return sorted(fsx.basename(d) for d, f in zip(dirs, firsts) if f.type == pafs.FileType.File)

    def splits(self, name: str) -> list[str]:
        return [fsx.basename(i.path) for i in fsx.children(self.fs, self.path(name))
                if i.type == pafs.FileType.Directory]

    def files(self, name: str, split: str) -> list[str]:
        return fsx.files_under(self.fs, self.path(name, split), (".parquet",), recursive=False)

    def file_size(self, path: str) -> int:
        return fsx.file_size(self.fs, path)

    def info(self, name: str) -> DatasetInfo:
        if not self.exists(name):
            known = ", ".join(self.names()) or "none"
            raise DataError(f"no dataset '{name}' in the store {self.root} (datasets: {known})")
        return self.file_info(fsx.join(self.path(name, "train"), FIRST_FILE))

    def file_info(self, path: str) -> DatasetInfo:
        """The metadata one file carries."""
        try:
            metadata = pq.read_schema(path, filesystem=self.fs).metadata or {}
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({fsx.first_line(exc)})") from None
        info = info_from_metadata(path, metadata)
        if info.format_version > FORMAT_VERSION:
            raise DataError(f"{path}: written by a newer pipeline (format version {info.format_version}, "
                            f"this one reads up to {FORMAT_VERSION})")
        return info

    def read(self, name: str, split: str) -> Split:
        """All rows of one split as numpy arrays, checked file by file (schema, metadata, values)."""
        from pipeline.data.rowgroups import SplitIndex

        index = SplitIndex.open(self, name, split)
        info = index.info
        try:
            table = pq.read_table(index.paths, filesystem=self.fs, schema=index.schema)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.path(name, split)}: cannot read: {fsx.first_line(exc)}") from None
        x, y = to_numpy(table.column(info.feature_column)), to_numpy(table.column(info.label_column))
        start = 0
        for path, rows in zip(index.paths, index.file_rows):
            check_rows(path, x[start:start + rows], y[start:start + rows], info.task, info.num_classes)
            start += rows
        return Split(x, y)

    def writer(self, template: DatasetInfo, overwrite: bool = False, layout: Layout | None = None):
        """A ``DatasetWriter`` that streams rows into a staging folder of this store."""
        from pipeline.data.writer import DatasetWriter

        if self.exists(template.name) and not overwrite:
            raise DataError(f"dataset '{template.name}' already exists in {self.root} (use --overwrite)")
        self.fs.create_dir(self.base)
        return DatasetWriter(self, template, overwrite, layout)

    def write(self, info: DatasetInfo, splits: dict[str, Split], overwrite: bool = False,
              layout: Layout | None = None) -> DatasetInfo:
        """Write in-memory splits (rows and fingerprint of the result are recomputed)."""
        with self.writer(info, overwrite, layout) as writer:
            for split_name, split in splits.items():
                writer.add_split(split_name)
                writer.append(split_name, split.x, split.y)
            return writer.commit()

    def install(self, staging: str, name: str, overwrite: bool) -> None:
        """Rename a finished staging folder to ``name``; an old dataset is moved aside first."""
        target = self.path(name)
        if fsx.kind(self.fs, target) != pafs.FileType.NotFound:
            if not overwrite:
                raise DataError(f"dataset '{name}' already exists in {self.root} (use --overwrite)")
            old = fsx.join(self.base, f".{name}.old-{uuid.uuid4().hex[:12]}")
            move_tree(self.fs, target, old)
            move_tree(self.fs, staging, target)
            fsx.remove_tree(self.fs, old)
        else:
            move_tree(self.fs, staging, target)

    def remove(self, name: str) -> None:
        fsx.remove_tree(self.fs, self.path(name))

    def size_bytes(self, name: str) -> int:
        return sum(self.file_size(p) for s in self.splits(name) for p in self.files(name, s))


def move_tree(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Rename a folder; where the filesystem cannot (object stores), move file by file.

    File by file, the first train file goes last, so the dataset only exists once whole.
    """
    try:
        fs.move(source, target)
        return
    except (OSError, pa.ArrowNotImplementedError):
        pass
    files = fsx.files_under(fs, source, ("",))
    first = fsx.join(source, "train", FIRST_FILE)
    for path in sorted(files, key=lambda p: p == first):
        dest = fsx.join(target, path[len(source.rstrip("/")) + 1:])
        fs.create_dir(dest.rsplit("/", 1)[0])
        fs.move(path, dest)
    fsx.remove_tree(fs, source)
