"""Small datasets with identifiable rows, and helpers to damage stored files the way disks and people do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pipeline.data import Split, Store
from pipeline.data.dataset import describe
from pipeline.data.layout import Layout
from pipeline.data.tensors import to_arrow

FEATURES = 3
ROW_BYTES = 4 * FEATURES + 4  # float32 features + int32 label
# 10 rows a row group, 4 groups a file: a 130-row split has 13 groups in 4 files (the last short).
SMALL = Layout(row_group_bytes=10 * ROW_BYTES, file_bytes=40 * ROW_BYTES, read_block_bytes=256)


def numbered(n: int, start: int = 0) -> Split:
    """Row i has features (i, -i - 1, i/2) and label i % 3: every row is distinct and identifiable."""
    i = np.arange(start, start + n, dtype=np.float32)
    return Split(np.stack([i, -i - 1, i / 2], axis=1), (np.arange(start, start + n) % 3).astype(np.int32))


def write_numbered(store: Store, name: str, train: int = 130, test: int = 20, layout: Layout = SMALL):
    splits = {"train": numbered(train), "test": numbered(test, start=10_000)}
    info = describe(name, splits, "classification", "test", ["a", "b", "c"], 3)
    return store.write(info, splits, layout=layout)


@pytest.fixture
def store(workdir) -> Store:
    return Store(workdir / "data")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: 'left as it was' is equality."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def write_csv(path: Path, x: np.ndarray, y, names: list[str] | None = None, target: str = "label") -> None:
    names = names or [f"f{j}" for j in range(x.shape[1])]
    columns = {n: pa.array(x[:, j]) for j, n in enumerate(names)}
    columns[target] = pa.array(y)
    pcsv.write_csv(pa.table(columns), path)


def rewrite(path: str | Path, x: np.ndarray | None = None, y: np.ndarray | None = None,
            metadata: dict | None = None, schema: pa.Schema | None = None) -> None:
    """Replace a stored file's rows and/or metadata, keeping everything else as it was."""
    table = pq.read_table(path)
    x = table.column(0).combine_chunks().to_numpy_ndarray() if x is None else x
    y = table.column(1).to_numpy() if y is None else y
    names = table.column_names
    new = pa.table({names[0]: to_arrow(x), names[1]: to_arrow(y)})
    if schema is not None:
        new = new.cast(schema)
    new = new.replace_schema_metadata(metadata if metadata is not None else table.schema.metadata)
    pq.write_table(new, path)
