"""Streaming writes: rows go to Parquet files in a staging folder as they arrive; commit renames.

Every file of the split stays open until ``commit()``: the row counts and the fingerprint are
only known at the end, and they go into each file's footer (``layout.footer_metadata``), so
no byte of data is ever written twice. Memory is bounded by one row group per split plus
the chunk being appended. Pages carry CRC checksums, verified by every reader.

A writer holds the store's lock from its creation to ``commit()`` or ``abort()``, and turns
SIGTERM into ``Terminated`` (pipeline/signals.py) meanwhile, so ``kill`` cleans up like Ctrl-C. Its staging
folder ``.NAME.tmp-ID`` is made exclusively (``mkdir``, never an existing folder). ``commit()``
fsyncs the files and folders and installs them by one atomic rename (commit.py); an OSError on
the way (disk full, a read-only store) deletes the staging folder and is one ``DataError`` line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import commit as commits
from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.fingerprint import Fingerprint
from pipeline.data.layout import Layout, arrow_schema, footer_metadata
from pipeline.data.stats import running_stats
from pipeline.data.tensors import to_arrow
from pipeline.data.validate import DataError
from pipeline.durable.files import make_dir_exclusive
from pipeline.signals import sigterm_as_interrupt


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
                                           use_dictionary=[label], write_statistics=[label],
                                           write_page_checksum=True))
        self.rows_in_file = 0


class DatasetWriter:
    """``append(split, x, y)`` chunks in row order, then ``commit()``; ``abort()`` leaves nothing.

    ``template`` fixes the name, task, columns, shapes and dtypes; rows, fingerprint and the
    train split's feature statistics are filled in from what was appended. ``wait``: wait for
    the store's lock instead of failing with the holder's pid and host.
    """

    def __init__(self, store, template: DatasetInfo, overwrite: bool = False, layout: Layout | None = None,
                 wait: bool = False):
        self.store, self.template, self.overwrite = store, template, overwrite
        self.layout = layout or Layout()
        self.fs = store.fs
        self.schema = arrow_schema(template)
        self.rows_per_group = self.layout.rows_per_group(template.row_bytes)
        self.rows_per_file = self.rows_per_group * self.layout.groups_per_file(template.row_bytes)
        self.splits: dict[str, _SplitWriter] = {}
        self.fingerprint = Fingerprint()
        self._x_dtype, self._y_dtype = np.dtype(template.feature_dtype), np.dtype(template.label_dtype)
        self.stats = running_stats(template)  # per feature for floats, per channel for images, none for tokens
        self.staging = ""
        self._held = ExitStack()
        self._open = True
        with self._or_abort():
            self._held.enter_context(sigterm_as_interrupt())
            self._held.enter_context(store.lock(wait, f"import '{template.name}'"))
            if store.exists(template.name) and not overwrite:
                raise DataError(f"dataset '{template.name}' already exists in {store.root} (use --overwrite)")
            commits.pause_at("locked")
            staging = fsx.join(store.base, f".{template.name}.tmp-{commits.token()}")
            if store.is_local:
                make_dir_exclusive(staging)
            else:
                self.fs.create_dir(staging)
            self.staging = staging
            commits.LIVE.add(staging)

    @contextmanager
    def _or_abort(self) -> Iterator[None]:
        """Any failure inside aborts (files closed, staging removed, lock released); an OSError
        becomes one line naming the path."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise self._error(exc) from None
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()  # a no-op after commit()

    def _error(self, exc: OSError) -> DataError:
        where = exc.filename if getattr(exc, "filename", None) else self.store.base
        reason = os.strerror(exc.errno) if exc.errno else fsx.first_line(exc)
        return DataError(f"{where}: cannot write dataset '{self.template.name}': {reason} "
                         "(nothing was stored)")

    def add_split(self, split: str) -> None:
        """Declare a split that may receive no rows (commit then reports it as empty)."""
        if split not in self.splits:
            with self._or_abort():
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
        with self._or_abort():
            self.splits[split].append(x, y)

    def commit(self) -> DatasetInfo:
        """Write the footers with the final metadata, fsync, and rename the staging folder into place."""
        with self._or_abort():
            commits.pause_at("staging")
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
            commits.LIVE.discard(self.staging)
            self.staging = ""
        self.abort()  # releases the lock; the staging folder is the dataset now
        return info

    def abort(self) -> None:
        """Close the files, delete the staging folder, release the lock. Safe to call twice."""
        if not self._open:
            return
        self._open = False
        for writer in self.splits.values():
            for file in writer.files:
                try:
                    file.close()
                except (OSError, pa.ArrowException):
                    pass
            writer.files = []
        try:
            if self.staging:
                if self.store.is_local:
                    commits.remove_local(self.staging)
                else:
                    fsx.remove_tree(self.fs, self.staging)
        except OSError:
            pass  # left for the next writer or `data gc` to collect
        finally:
            commits.LIVE.discard(self.staging)
            self.staging = ""
            self._held.close()
