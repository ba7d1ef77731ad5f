"""The data store: a folder of datasets, each a folder of Parquet files per split.

Layout: ``ROOT/NAME/SPLIT/part-NNNNN.parquet``. Every file carries the dataset's metadata
(``DatasetInfo`` as JSON) under the schema metadata key ``pipeline``, so plain pyarrow, pandas
or DuckDB read the data and the metadata cannot drift. ROOT is a local folder or any URI
pyarrow's filesystem layer (or fsspec) understands: ``s3://bucket/store``, ``memory://store``.
A dataset exists once ``NAME/train/part-00000.parquet`` does; imports write elsewhere first
and rename, so a failed import leaves nothing that counts as a dataset.

Writes hold the store's lock (lock.py) and commit with one atomic rename (commit.py); readers
take no lock. A reader notices a dataset replaced under it (the folder's identity changed) and
reads again, or, mid-stream, stops with one line: it never mixes files of two imports.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.data import commit
from pipeline.data import fs as fsx
from pipeline.data.dataset import FORMAT_VERSION, DatasetInfo, Split
from pipeline.data.layout import Layout, info_from_metadata
from pipeline.data.lock import StoreLock, StoreLocked, is_locked_by_me
from pipeline.data.names import check_dataset_name, is_dataset_name
from pipeline.data.rowgroups import DatasetReplaced, SplitIndex
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError, check_rows

FIRST_FILE = "part-00000.parquet"


def default_root() -> Path:
    return Path(os.environ.get("PIPELINE_STORE", "data"))


def os_error(exc: OSError, where: str) -> DataError:
    """One line for an OSError: the path it names (else ``where``) and the reason."""
    path = exc.filename if getattr(exc, "filename", None) else where
    reason = os.strerror(exc.errno) if exc.errno else fsx.first_line(exc)
    return DataError(f"{path}: {reason}")


class Store:
    """A store root: a local path, a URI, or a path inside an explicit pyarrow ``filesystem``."""

    def __init__(self, root: str | Path | None = None, filesystem: pafs.FileSystem | None = None):
        self.root = root if root is not None else default_root()
        if filesystem is not None:
            self.fs, self.base = filesystem, str(root).rstrip("/") or "/"
        else:
            self.fs, self.base = fsx.resolve(self.root)

    @property
    def is_local(self) -> bool:
        """On the local filesystem: locks, fsync and atomic renames are available."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, name: str, split: str | None = None) -> str:
        return fsx.join(self.base, check_dataset_name(name), split or "")

    def check_root(self) -> None:
        """The root is a folder, or nothing yet."""
        if fsx.kind(self.fs, self.base) not in (pafs.FileType.NotFound, pafs.FileType.Directory):
            raise DataError(f"{self.root}: the store is not a folder")

    def exists(self, name: str) -> bool:
        first = fsx.join(self.path(name, "train"), FIRST_FILE)
        if fsx.is_file(self.fs, first):
            return True
        return self._restore(name) and fsx.is_file(self.fs, first)

    def names(self, _recover: bool = True) -> list[str]:
        self.check_root()
        entries = fsx.children(self.fs, self.base)
        dirs = [i.path for i in entries if i.type == pafs.FileType.Directory and is_dataset_name(fsx.basename(i.path))]
        present = {fsx.basename(d) for d in dirs}
        orphans = {m.group("name") for i in entries if (m := commit.OLD.match(fsx.basename(i.path)))} - present
        if _recover and any([self._restore(name) for name in sorted(orphans) if is_dataset_name(name)]):
            return self.names(_recover=False)
        if not dirs:
            return []
        firsts = self.fs.get_file_info([fsx.join(d, "train", FIRST_FILE) for d in dirs])
        return sorted(fsx.basename(d) for d, f in zip(dirs, firsts) if f.type == pafs.FileType.File)

    def _restore(self, name: str) -> bool:
        """A reader's half of the recovery rule (commit.py), for ``name`` missing beside an ``.NAME.old-*``.

        With the lock free, the rule is applied now. With it held, a writer is between its two
        renames: wait (up to 10 s) for ``NAME`` to appear. Local stores only; True if it may be there now.
        """
        if not self.is_local or is_locked_by_me(self.base) or os.path.lexists(self.path(name)):
            return False
        if not any(kind == "old" and n == name and commit.is_real_dir(p) for kind, n, p in commit.leftovers(self)):
            return False
        first = fsx.join(self.path(name, "train"), FIRST_FILE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lock = StoreLock(self.base, what="recovery")
            try:
                lock.acquire()
            except StoreLocked:
                if fsx.is_file(self.fs, first):
                    return True
                time.sleep(0.02)
                continue
            except DataError:
                return False  # cannot lock (a read-only store): read what is there
            try:
                commit.recover(self)
            except (OSError, DataError):
                return False
            finally:
                lock.release()
            return True
        return True

    def splits(self, name: str) -> list[str]:
        return [fsx.basename(i.path) for i in fsx.children(self.fs, self.path(name))
                if i.type == pafs.FileType.Directory]

    def files(self, name: str, split: str) -> list[str]:
        return fsx.files_under(self.fs, self.path(name, split), (".parquet",), recursive=False)

    def file_size(self, path: str) -> int:
        return fsx.file_size(self.fs, path)

    def identity(self, name: str) -> tuple[int, int] | None:
        """What changes when the dataset's folder is replaced: (device, inode) on local stores."""
        if not self.is_local:
            return None
        try:
            found = os.stat(self.path(name))
        except OSError:
            return (-1, -1)
        return (found.st_dev, found.st_ino)

    def info(self, name: str) -> DatasetInfo:
        if not self.exists(name):
            self.check_root()
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
        """All rows of one split as numpy arrays, checked file by file (schema, metadata, values).

        Read again (up to three times) if the dataset is replaced while it is read.
        """
        for attempt in range(3):
            try:
                return self._read(name, split)
            except DatasetReplaced:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read(self, name: str, split: str) -> Split:
        index = SplitIndex.open(self, name, split)
        info = index.info
        try:
            table = pq.read_table(index.paths, filesystem=self.fs, schema=index.schema,
                                  page_checksum_verification=True)
        except (OSError, pa.ArrowException) as exc:
            index.check_unchanged()
            for group in index.groups:  # name the file (and row group) at fault
                index.read(group)
            raise DataError(f"{self.path(name, split)}: cannot read: {fsx.first_line(exc)}") from None
        index.check_unchanged()
        x, y = to_numpy(table.column(info.feature_column)), to_numpy(table.column(info.label_column))
        start = 0
        for path, rows in zip(index.paths, index.file_rows):
            check_rows(path, x[start:start + rows], y[start:start + rows], info.task, info.num_classes)
            start += rows
        return Split(x, y)

    # -- writing ----------------------------------------------------------------------------------

    @contextmanager
    def lock(self, wait: bool = False, what: str = "", collect: bool = True):
        """Hold the store's write lock (local stores; elsewhere nothing is locked).

        The outermost acquisition in a process applies the recovery rule and deletes stale
        staging first (``collect``).
        """
        if not self.is_local:
            yield
            return
        self.check_root()
        try:
            os.makedirs(self.base, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, self.base) from None
        with StoreLock(self.base, wait, what) as held:
            if held.acquired_first and collect:
                try:
                    commit.recover(self)
                except OSError as exc:
                    raise os_error(exc, self.base) from None
            yield

    def writer(self, template: DatasetInfo, overwrite: bool = False, layout: Layout | None = None,
               wait: bool = False):
        """A ``DatasetWriter`` that streams rows into a staging folder of this store.

        It holds the store's lock from here to ``commit()`` or ``abort()``.
        """
        from pipeline.data.writer import DatasetWriter

        check_dataset_name(template.name)
        if self.exists(template.name) and not overwrite:
            raise DataError(f"dataset '{template.name}' already exists in {self.root} (use --overwrite)")
        self.check_root()
        if not self.is_local:
            self.fs.create_dir(self.base)
        return DatasetWriter(self, template, overwrite, layout, wait)

    def write(self, info: DatasetInfo, splits: dict[str, Split], overwrite: bool = False,
              layout: Layout | None = None, wait: bool = False) -> DatasetInfo:
        """Write in-memory splits (rows and fingerprint of the result are recomputed)."""
        with self.writer(info, overwrite, layout, wait) as writer:
            for split_name, split in splits.items():
                writer.add_split(split_name)
                writer.append(split_name, split.x, split.y)
            return writer.commit()

    def install(self, staging: str, name: str, overwrite: bool) -> None:
        """Make a finished staging folder the dataset ``name`` (commit.py); the caller holds the lock."""
        commit.install(self, staging, name, overwrite)

    def remove(self, name: str, wait: bool = False) -> None:
        with self.lock(wait, f"remove '{name}'"):
            if self.is_local:
                commit.remove_local(self.path(name))
            else:
                fsx.remove_tree(self.fs, self.path(name))

    def gc(self, wait: bool = False) -> list[str]:
        """Apply the recovery rule and delete what interrupted writers left; what was done."""
        self.check_root()
        if fsx.kind(self.fs, self.base) == pafs.FileType.NotFound:
            return []
        with self.lock(wait, "gc", collect=False) if self.is_local else nullcontext():
            try:
                return commit.recover(self)
            except OSError as exc:
                raise os_error(exc, self.base) from None

    def size_bytes(self, name: str) -> int:
        return sum(self.file_size(p) for s in self.splits(name) for p in self.files(name, s))
