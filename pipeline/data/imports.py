"""Import a source into the store: read, split, validate, describe, write atomically.

``.npz`` archives and built-ins are read into memory. Table sources (a ``.csv`` or ``.parquet``
file, a folder or a glob of them, on any filesystem) stream in two passes: the target
column alone (row count, label kind, class names), then every column chunk by chunk into
the dataset writer. Either way nothing is visible in the store unless every check passed.
"""

from __future__ import annotations

import re

from pipeline.data.builtins import BUILTINS
from pipeline.data.dataset import DatasetInfo, Split, describe
from pipeline.data.labels import LabelPlan, LabelScan
from pipeline.data.layout import Layout
from pipeline.data.sources import load_source, split_off_test, test_mask
from pipeline.data.store import Store
from pipeline.data.tables import TableFiles, feature_array, feature_shape
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError, check_rows, check_split

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def import_dataset(store: Store, source: str, name: str, target: str | None = None,
                   test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False,
                   layout: Layout | None = None) -> DatasetInfo:
    """Import ``source`` as dataset ``name``. Nothing is written unless every check passes."""
    if not _NAME.match(name):
        raise DataError(f"bad dataset name '{name}': use letters, digits, '_', '-' and '.'")
    if store.exists(name) and not overwrite:
        raise DataError(f"dataset '{name}' already exists in {store.root} (use --overwrite)")
    if source.startswith("builtin:") or source.lower().endswith(".npz"):
        return _import_arrays(store, source, name, target, test_fraction, seed, overwrite, layout)
    return _import_tables(store, source, name, target, test_fraction, seed, overwrite, layout or Layout())


def _import_arrays(store: Store, source: str, name: str, target: str | None, test_fraction: float,
                   seed: int, overwrite: bool, layout: Layout | None) -> DatasetInfo:
    loaded = load_source(source, target, seed)
    train, test = loaded.train, loaded.test
    if test is None:
        check_split(f"{source} (all rows)", train, loaded.task, loaded.num_classes)
        train, test = split_off_test(train, test_fraction, seed)
    splits: dict[str, Split] = {"train": train, "test": test}
    for split_name, split in splits.items():
        check_split(f"{source} ({split_name} split)", split, loaded.task, loaded.num_classes)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{source}: train features have shape {train.x.shape[1:]} but test {test.x.shape[1:]}")
    info = describe(name, splits, loaded.task, source, loaded.class_names, loaded.num_classes)
    return store.write(info, splits, overwrite=overwrite, layout=layout)


def _import_tables(store: Store, source: str, name: str, target: str | None, test_fraction: float,
                   seed: int, overwrite: bool, layout: Layout) -> DatasetInfo:
    files = TableFiles(source, layout)
    stored = files.pipeline_info()  # Parquet written by this pipeline: keep its columns' meaning
    target = target or (stored.label_column if stored else None)
    if not target:
        raise DataError(f"{source}: --target COLUMN is required for a table source")
    if target not in files.columns:
        raise DataError(f"{files.paths[0]}: no target column '{target}' (columns: {', '.join(files.columns)})")
    features = [c for c in files.columns if c != target]
    if not features:
        raise DataError(f"{files.paths[0]}: no feature columns besides the target '{target}'")
    as_stored = stored is not None and target == stored.label_column and features == [stored.feature_column]
    plan, rows = _plan_labels(files, target, stored if as_stored else None)
    if rows == 0:
        raise DataError(f"{source}: no rows")
    is_test = test_mask(rows, test_fraction, seed)
    template = DatasetInfo(
        name=name, task=plan.task,
        feature_shape=stored.feature_shape if as_stored else feature_shape(files, features),
        feature_dtype=stored.feature_dtype if as_stored else "float32",
        label_shape=stored.label_shape if as_stored else (),
        label_dtype=stored.label_dtype if as_stored else plan.dtype,
        num_classes=plan.num_classes, class_names=plan.class_names,
        feature_column=stored.feature_column if as_stored else "x",
        label_column=stored.label_column if as_stored else "y", source=source)
    with store.writer(template, overwrite, layout) as writer:
        writer.add_split("train")
        writer.add_split("test")
        row = 0
        for chunk in files.chunks(files.columns, features):
            x = feature_array(chunk, features, keep_dtype=as_stored)
            label = chunk.batch.column(chunk.batch.schema.get_field_index(target))
            y = to_numpy(label).astype(template.label_dtype) if as_stored else plan.encode(label)
            check_rows(chunk.path, x, y, plan.task, plan.num_classes, chunk.first_row)
            mask = is_test[row:row + len(x)]
            row += len(x)
            writer.append("train", x[~mask], y[~mask])
            writer.append("test", x[mask], y[mask])
        if row != rows:
            raise DataError(f"{source}: {row} rows on the second read but {rows} on the first (changed while read?)")
        return writer.commit()


def _plan_labels(files: TableFiles, target: str, stored: DatasetInfo | None) -> tuple[LabelPlan, int]:
    """First pass over the target column: the row count and how labels are encoded."""
    if stored is not None:
        rows = sum(c.batch.num_rows for c in files.chunks([target]))
        return LabelPlan(stored.task, stored.num_classes, stored.class_names, None, "stored"), rows
    scan = LabelScan(target)
    for chunk in files.chunks([target]):
        scan.update(chunk.path, chunk.batch.column(0), chunk.first_row)
    if scan.kind == "string" and scan.uniques_dropped:
        # Numbers first, text later: collect the distinct values again, all as text.
        rescan = LabelScan(target, kind="string")
        for chunk in files.chunks([target]):
            rescan.update(chunk.path, chunk.batch.column(0), chunk.first_row)
        scan = rescan
    return LabelPlan.from_scan(scan), scan.rows


def ensure_dataset(store: Store, name: str) -> DatasetInfo:
    """The dataset's info, importing a built-in of the same name on first use."""
    if not store.exists(name) and name in BUILTINS:
        return import_dataset(store, f"builtin:{name}", name)
    return store.info(name)
