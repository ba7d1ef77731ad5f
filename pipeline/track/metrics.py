"""A run's metrics table: long format (step, split, name, value, wall_s) in one Parquet file.

Rows collect in memory and ``flush`` rewrites ``metrics.parquet`` through a temporary
file and an atomic rename: a killed run loses at most the rows since the last flush,
and the file on disk is always a whole, readable table.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("split", pa.string()),
    ("name", pa.string()),
    ("value", pa.float64()),
    ("wall_s", pa.float64()),
])


class MetricsTable:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._tables: list[pa.Table] = []
        self._dirty = False
        if self.path.exists():
            self._tables.append(pq.read_table(self.path).cast(SCHEMA))

    def add(self, step: int | np.ndarray, split: str, values: dict[str, np.ndarray | float], wall_s: float) -> None:
        """Add one or many steps of named metrics (arrays share the ``step`` array's length)."""
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
        self._tables.append(pa.table({
            "step": np.concatenate(columns["step"]),
            "split": np.full(n, split, dtype=object),
            "name": np.concatenate(columns["name"]),
            "value": np.concatenate(columns["value"]),
            "wall_s": np.full(n, wall_s),
        }, schema=SCHEMA))
        self._dirty = True

    def table(self) -> pa.Table:
        if not self._tables:
            return SCHEMA.empty_table()
        table = pa.concat_tables(self._tables)
        self._tables = [table]
        return table

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step``: a resumed run rewrites them exactly once."""
        table = self.table()
        keep = np.asarray(table.column("step")) <= step
        self._tables = [table.filter(pa.array(keep))]
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(self.table(), tmp)
        os.replace(tmp, self.path)
        self._dirty = False


def read_metrics(path: Path) -> pa.Table:
    return pq.read_table(path)
