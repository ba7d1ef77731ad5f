"""Human-readable descriptions of the store's datasets."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import fs as fsx
from pipeline.data.stats import summary
from pipeline.data.store import Store
from pipeline.data.text_dataset import show_lines
from pipeline.data.validate import DataError


def list_rows(store: Store) -> list[dict]:
    """One row a dataset; a dataset whose metadata cannot be read is listed as such, not skipped."""
    rows = []
    for name in store.names():
        try:
            info = store.info(name)
        except DataError:
            rows.append({"name": name, "task": "unreadable (see data verify)", "features": "", "classes": "",
                         "rows": "", "bytes": store.size_bytes(name)})
            continue
        rows.append({
            "name": name, "task": info.task, "features": "x".join(map(str, info.feature_shape)) or "scalar",
            "classes": info.num_classes or "", "rows": " / ".join(f"{k} {v}" for k, v in info.rows.items()),
            "bytes": store.size_bytes(name),
        })
    return rows


def show_text(store: Store, name: str) -> str:
    info = store.info(name)
    first = store.files(name, "train")[0]
    try:
        schema = pq.read_schema(first, filesystem=store.fs)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{first}: not a readable Parquet file ({fsx.first_line(exc)})") from None
    lines = [
        f"dataset      {info.name}",
        f"path         {store.path(name)}",
        f"task         {info.task}",
        f"features     column '{info.feature_column}' {info.feature_dtype} {list(info.feature_shape)}",
        f"labels       column '{info.label_column}' {info.label_dtype} {list(info.label_shape)}",
    ]
    if info.num_classes:
        names = ", ".join(info.class_names[:12]) + (" ..." if len(info.class_names) > 12 else "")
        lines.append(f"classes      {info.num_classes} ({names})")
    lines += show_lines(info)  # a text dataset's tokenizer and counts (text_dataset.py)
    for split, rows in info.rows.items():
        files = store.files(name, split)
        size = sum(store.file_size(f) for f in files)
        lines.append(f"split        {split}: {rows} rows, {len(files)} file(s), {size:,} bytes")
    lines += [
        f"statistics   {summary(info)}",
        f"bytes        {store.size_bytes(name):,}",
        f"source       {info.source}",
        f"fingerprint  {info.fingerprint}",
        f"format       version {info.format_version}",
        "schema",
    ]
    lines += [f"  {field.name}: {field.type}" for field in schema]
    return "\n".join(lines)
