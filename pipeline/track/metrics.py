"""A run's metrics table: long format (step, split, name, value, wall_s) as a Parquet dataset folder.

A population's table (a sweep's) has a leading ``trial`` column: one writer serves both.

On disk ``RUN_DIR/metrics.parquet/`` holds parts ``part-SEQUENCE-LEVEL.parquet``;
``pyarrow.parquet.read_table``, ``pandas.read_parquet`` and DuckDB
(``read_parquet('RUN_DIR/metrics.parquet/*.parquet')``) read the folder as one table.

* ``add`` collects rows in memory; ``flush`` writes them as one new part (level 0) through
  a uniquely named temporary file, fsync and a rename. Nothing already on disk is read or
  rewritten, so a flush costs the rows since the last one, and a killed run loses at most
  those rows.
* Parts merge like a log-structured tree: whenever the newest ``FANOUT`` parts share a
  level, they become one part of the next level, in a copy of the folder (the other parts
  hard-linked) that atomically replaces it. Every row is rewritten about
  log_FANOUT(flushes) times over a run and a long run keeps a few dozen parts at most.
* ``truncate_after(step)`` (a resume) deletes the parts that start past ``step`` and
  rewrites, through a rename, the one part that straddles it. The rule that makes rows past
  a checkpoint disappear exactly once: each row lives in exactly one part, every change
  replaces or removes whole parts atomically, and new rows are only appended after the
  truncation is complete on disk. A kill in the middle of a truncation leaves some rows
  past the checkpoint (the next resume removes them), never a row twice.
* Hidden names (``.part-...tmp``, ``.metrics.parquet.new-...``) are a killed writer's
  leftovers; readers skip them and the next owner of the run folder deletes them.
* The writer keeps the parts it wrote in memory, up to ``KEPT_ROWS`` rows: a merge and ``table``
  (a sweep reads a population's table as the population ends) read those without the disk.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.durable.files import fsync_dir, remove_path, write_parquet
from pipeline.durable.folder_locks import tie_lock_to
from pipeline.durable.records import CorruptFile, parquet_files, read_parquet, read_parquet_files
from pipeline.durable.renames import new_folder_beside, recover_folder, replace_folder

SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("split", pa.string()),
    ("name", pa.string()),
    ("value", pa.float64()),
    ("wall_s", pa.float64()),
])
MEMBERS_SCHEMA = pa.schema([("trial", pa.int32()), *SCHEMA])
PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
FANOUT = 8  # parts of one level that merge into one of the next
KEPT_ROWS = 1 << 18  # rows of the parts it wrote that a writer keeps in memory, to read them without the disk


def part_name(sequence: int, level: int) -> str:
    return f"part-{sequence:09d}-{level}.parquet"


class MetricsTable:
    """The writer of ``RUN_DIR/metrics.parquet``; only the process that locks the run folder makes one."""

    def __init__(self, path: Path, members: bool = False):
        self.path = Path(path)
        self.schema = MEMBERS_SCHEMA if members else SCHEMA
        self._pending: list[pa.Table] = []
        self._parts: list[tuple[int, int, Path]] = []  # (sequence, level, path), oldest first
        self._kept: dict[Path, pa.Table] = {}  # parts this writer wrote, as written (``KEPT_ROWS``)
        tie_lock_to(self.path.parent, self)  # a library run's folder lock ends with its metrics writer
        self._open()

    # -- opening -------------------------------------------------------------------------------
    def _open(self) -> None:
        recover_folder(self.path)  # a merge killed between its two renames; killed writers' leftovers
        if self.path.is_file() or self.path.is_symlink():
            self._migrate()
        if not self.path.exists():
            os.mkdir(self.path)
            fsync_dir(self.path.parent)
        for entry in os.listdir(self.path):
            if entry.startswith("."):  # a temporary file of a killed flush
                remove_path(self.path / entry)
        for entry in sorted(os.listdir(self.path)):
            match = PART.match(entry)
            if match:
                self._parts.append((int(match[1]), int(match[2]), self.path / entry))
        self._parts.sort()

    def _migrate(self) -> None:
        """A run recorded as one ``metrics.parquet`` file: its rows become the folder's first part."""
        if self.path.is_symlink():
            raise CorruptFile(f"{self.path}: a symbolic link, not the run's metrics")
        table = read_parquet(self.path).cast(self.schema)
        new = new_folder_beside(self.path, "new")
        write_parquet(table, new / part_name(1, 0))
        replace_folder(new, self.path)

    # -- writing -------------------------------------------------------------------------------
    def add(self, step: int | np.ndarray, split: str, values: dict[str, np.ndarray | float], wall_s: float,
            trial: np.ndarray | None = None) -> None:
        """Add one or many steps of named metrics (arrays share the ``step`` array's length; so does
        ``trial``, the member of each row, in a population's table)."""
        steps = np.atleast_1d(np.asarray(step, np.int64))
        columns: dict[str, list] = {f: [] for f in SCHEMA.names}
        for name, value in values.items():
            v = np.broadcast_to(np.asarray(value, np.float64), steps.shape)
            columns["step"].append(steps)
            columns["value"].append(v)
            columns["name"].append(np.full(steps.shape, name, dtype=object))
        if not columns["step"]:
            return
        n = sum(len(s) for s in columns["step"])
        # Step by step (each step's names, members, in order): the rows of a call of K steps come in the
        # order K calls of one step give them, so the table is the same whatever K the engine took.
        order = np.argsort(np.concatenate(columns["step"]), kind="stable")
        members = {} if trial is None else {"trial": np.tile(np.asarray(trial, np.int32), len(columns["step"]))[order]}
        self._pending.append(pa.table({
            **members,
            "step": np.concatenate(columns["step"])[order],
            "split": np.full(n, split, dtype=object),
            "name": np.concatenate(columns["name"])[order],
            "value": np.concatenate(columns["value"])[order],
            "wall_s": np.full(n, wall_s),
        }, schema=self.schema))

    def flush(self) -> None:
        """The rows added since the last flush become one new part (nothing on disk is rewritten)."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        sequence = self._parts[-1][0] + 1 if self._parts else 1
        path = self.path / part_name(sequence, 0)
        write_parquet(table, path)
        self._keep(path, table)
        self._pending = []
        self._parts.append((sequence, 0, path))
        self._merge()

    def _merge(self) -> None:
        while len(self._parts) >= FANOUT and len({level for _, level, _ in self._parts[-FANOUT:]}) == 1:
            group, keep = self._parts[-FANOUT:], self._parts[:-FANOUT]
            sequence, level = group[0][0], group[0][1] + 1
            merged = self._read([p for _, _, p in group])
            new = new_folder_beside(self.path, "new")
            try:
                for _, _, p in keep:
                    _link_or_copy(p, new / p.name)
                write_parquet(merged, new / part_name(sequence, level))
                replace_folder(new, self.path)
            except BaseException:
                remove_path(new)
                raise
            for _, _, p in group:
                self._kept.pop(p, None)
            self._parts = keep + [(sequence, level, self.path / part_name(sequence, level))]
            self._keep(self._parts[-1][2], merged)

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step``: a resumed run rewrites them exactly once (see the module's rule)."""
        self._pending = [t.filter(pc.less_equal(t.column("step"), step)) for t in self._pending]
        changed = False
        for entry in list(reversed(self._parts)):
            path = entry[2]
            steps = read_parquet(path, columns=["step"]).column("step")
            if len(steps) and pc.max(steps).as_py() <= step:
                continue
            changed = True
            self._kept.pop(path, None)
            if not len(steps) or pc.min(steps).as_py() > step:
                os.unlink(path)
                self._parts.remove(entry)
            else:
                table = read_parquet_files([path], self.schema)
                write_parquet(table.filter(pc.less_equal(table.column("step"), step)), path)
        if changed:
            fsync_dir(self.path)  # the truncation is on disk before any new row is

    def truncate_members(self, last: dict[int, int]) -> None:
        """A population whose members count their own steps (a refill sweep): drop each trial's rows past
        ``last[trial]``, and every row of a trial not in ``last``; by the rule of ``truncate_after``."""

        def keep(table: pa.Table) -> np.ndarray:
            trials, steps = np.asarray(table.column("trial")), np.asarray(table.column("step"))
            limit = np.full(len(trials), -1, np.int64)
            for t in np.unique(trials):
                limit[trials == t] = last.get(int(t), -1)
            return steps <= limit

        self._pending = [t.filter(keep(t)) for t in self._pending]
        changed = False
        for entry in list(reversed(self._parts)):
            table = read_parquet_files([entry[2]], self.schema)
            mask = keep(table)
            if mask.all():
                continue
            changed = True
            self._kept.pop(entry[2], None)
            if not mask.any():
                os.unlink(entry[2])
                self._parts.remove(entry)
            else:
                write_parquet(table.filter(mask), entry[2])
        if changed:
            fsync_dir(self.path)

    # -- reading -------------------------------------------------------------------------------
    def table(self) -> pa.Table:
        """Every row: those on disk, then those not flushed yet."""
        on_disk = self._read([p for _, _, p in self._parts])
        return pa.concat_tables([on_disk, *self._pending]) if self._pending else on_disk

    def _keep(self, path: Path, table: pa.Table) -> None:
        if sum(t.num_rows for t in self._kept.values()) + table.num_rows <= KEPT_ROWS:
            self._kept[path] = table

    def _read(self, paths: list[Path]) -> pa.Table:
        """The parts ``paths`` as one table: those kept from memory, the others from the disk."""
        if not all(p in self._kept for p in paths):
            return read_parquet_files(paths, self.schema)
        return pa.concat_tables([self._kept[p] for p in paths]) if paths else self.schema.empty_table()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)


def read_metrics(path: Path) -> pa.Table:
    """A run's metrics table (its folder of parts, or the single file of an older run).

    A damaged part is one line naming it (``CorruptFile``).
    """
    path = Path(path)
    if path.is_file():
        return read_parquet_files([path], SCHEMA)
    return read_parquet_files(parquet_files(path), SCHEMA)
