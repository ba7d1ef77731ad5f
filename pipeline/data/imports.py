"""Import a source into the store: read, split, validate, describe, write atomically.

``.npz`` archives and built-ins are read into memory. Table sources (a ``.csv`` or ``.parquet``
file, a folder or a glob of them, on any filesystem; a DataFrame, frames.py) stream in two
passes: the target column alone (row counts, label kind, class names), then the feature and
target columns chunk by chunk into the dataset writer. A source's own splits are kept. Either
way nothing is visible in the store unless every check passed.

Images (image_import.py): a folder of ``CLASS/IMAGE`` files (optionally below split folders),
or Parquet whose feature column is Hugging Face's image struct ``{bytes, path}``; decoded with
Pillow into uint8 tensors (H, W, C), resized by ``image_size`` and converted by ``channels``.

Text (text_import.py): text files, or a text column of a table source, tokenized and packed into
token windows, with the tokenizer stored beside the dataset.

``task`` (``--task``) says whether the target is class ids or numbers (labels.py); a table
source's feature column names and target name are stored with the dataset (``feature_names``,
``target``), so the trained model can match a frame's columns by name.
"""

from __future__ import annotations

import math
import numbers

import pyarrow.fs as pafs

from pipeline.data import fs as fsx
from pipeline.data.builtins import BUILTINS
from pipeline.data.dataset import DatasetInfo, Loaded, Split, describe
from pipeline.data.features import FeaturePlan, pick_features
from pipeline.data.image_folder import holds_images, list_images
from pipeline.data.image_import import image_columns, import_image_folder, import_image_table
from pipeline.data.images import ImageOptions
from pipeline.data.labels import LabelPlan, LabelScan, check_task_choice, settle_loaded_task
from pipeline.data.layout import Layout
from pipeline.data.sources import append_rows, load_source, split_off_test, test_mask
from pipeline.data.store import Store, check_dataset_name
from pipeline.data.tables import TableFiles, Tables
from pipeline.data.tensors import to_numpy
from pipeline.data.text_import import TextOptions, check_text_args, import_text, is_text_import
from pipeline.data.validate import DataError, check_rows, check_split
from pipeline.signals import sigterm_as_interrupt


def import_dataset(store: Store, source: str, name: str, target: str | None = None,
                   test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False,
                   layout: Layout | None = None, features: list[str] | None = None,
                   wait: bool = False, task: str | None = None, image_size: tuple[int, int] | None = None,
                   channels: int | None = None, image_pool: str = "thread",
                   text: TextOptions | None = None) -> DatasetInfo:
    """Import ``source`` as dataset ``name``. Nothing is written unless every check passes.

    ``features`` picks a table source's feature columns (default: every column but the target).
    ``task``: "classification" or "regression" as the user says it; None decides from the labels and
    refuses an integer target that could be either (labels.py).
    ``image_size`` (H, W) and ``channels`` (1 or 3) shape the images of an image source (images.py);
    ``image_pool`` decodes them on "thread"s or "process"es (image_import.py).
    ``text`` (``--tokenizer``, ``--seq-len``, ``--text-column``) tokenizes text files or a text column
    (text_import.py); text files are imported as text without it too.
    ``wait``: wait for another writer's store lock instead of failing with its pid and host.
    SIGTERM meanwhile is handled like Ctrl-C (pipeline/signals.py): the staging folder is deleted.
    """
    check_name(store, name, overwrite)
    check_split_args(test_fraction, seed)
    check_task_choice(task)
    images = ImageOptions(tuple(image_size) if image_size is not None else None, channels)
    images.check()
    shaped = image_size is not None or channels is not None
    with sigterm_as_interrupt():
        text = text or TextOptions()
        if is_text_import(source, text):
            check_text_args(source, target, features, task, shaped)
            return import_text(store, source, name, text, test_fraction, seed, overwrite, layout or Layout(), wait)
        if source.startswith("builtin:") or source.lower().endswith(".npz"):
            if features is not None:
                raise DataError(f"{source}: --features picks columns of a table source (.csv, .parquet), "
                                "not of an .npz or a built-in")
            if shaped:
                raise DataError(f"{source}: --image-size and --channels are for image sources, not an .npz or "
                                "a built-in")
            loaded = settle_loaded_task(source, load_source(source), task, ask=not source.startswith("builtin:"))
            return import_loaded(store, loaded, source, name, test_fraction, seed, overwrite, layout, wait=wait)
        layout = layout or Layout()
        if holds_images(source):
            check_image_folder_args(source, target, features, task)
            return import_image_folder(store, list_images(source), name, images, test_fraction, seed, overwrite,
                                       layout, wait=wait, pool=image_pool)
        tables = TableFiles(source, layout)
        column = image_column(tables, target, features)
        if column is not None:
            return import_image_tables(store, tables, name, column, target, task, images, test_fraction, seed,
                                       overwrite, layout, wait, image_pool)
        if shaped:
            raise DataError(f"{source}: --image-size and --channels are for image sources (a folder of "
                            "CLASS/IMAGE files, or Parquet with an image column); this one has none")
        return import_tables(store, tables, name, target, features, test_fraction, seed,
                             overwrite, layout, wait=wait, task=task)


def check_image_folder_args(source: str, target: str | None, features: list[str] | None,
                            task: str | None) -> None:
    if target is not None or features is not None:
        raise DataError(f"{source}: an image folder's labels are its class folders; --target and --features "
                        "are for table sources")
    if task == "regression":
        raise DataError(f"{source}: an image folder's class folders are classes; --task regression needs a "
                        "table source with a numeric target")


def image_column(tables: Tables, target: str | None, features: list[str] | None) -> str | None:
    """The Parquet source's image column (Hugging Face's ``{bytes, path}`` struct), or None for a plain table."""
    found = [c for c in image_columns(tables) if c != target] if tables.kind == "parquet" else []
    if features is not None:
        picked = [c for c in features if c in found]
        if picked and len(features) > 1:
            raise DataError(f"{tables.paths[0]}: image column '{picked[0]}' cannot be combined with other "
                            "feature columns; pick it alone with --features")
        return picked[0] if picked else None
    if len(found) > 1:
        raise DataError(f"{tables.paths[0]}: image columns {', '.join(found)}; pick one with --features")
    return found[0] if found else None


def import_image_tables(store: Store, tables: Tables, name: str, column: str, target: str | None,
                        task: str | None, images: ImageOptions, test_fraction: float, seed: int, overwrite: bool,
                        layout: Layout, wait: bool, pool: str) -> DatasetInfo:
    """Labels as for any table source (one pass over the target), then the images decoded chunk by chunk."""
    if not target:
        raise DataError(f"{tables.source}: --target COLUMN is required for a table source")
    if target not in tables.columns:
        raise DataError(f"{tables.paths[0]}: no target column '{target}' (columns: {', '.join(tables.columns)})")
    plan, rows = _plan_labels(tables, target, None, task or "classification")
    for split, count in rows.items():
        if count == 0:
            raise DataError(f"{tables.source}: the {split} split has no rows")
    return import_image_table(store, tables, name, column, target, plan, rows, images, test_fraction, seed,
                              overwrite, layout, wait=wait, pool=pool)


def check_name(store: Store, name: str, overwrite: bool) -> None:
    check_dataset_name(name)
    if store.exists(name):
        if not overwrite:
            raise DataError(f"dataset '{name}' already exists in {store.root} (use --overwrite)")
    elif fsx.kind(store.fs, store.path(name)) != pafs.FileType.NotFound:
        raise DataError(f"{store.path(name)}: exists but is not a dataset (no train/part-00000.parquet); "
                        "move it away or remove it")


def check_split_args(test_fraction: float, seed: int) -> None:
    """``--test-fraction`` in (0, 1) and ``--seed`` a non-negative integer, whether or not they are used."""
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real)
            or not math.isfinite(test_fraction) or not 0.0 < test_fraction < 1.0):
        raise DataError(f"--test-fraction must be between 0 and 1, not {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise DataError(f"--seed must be a non-negative integer, not {seed}")


def import_loaded(store: Store, loaded: Loaded, source: str, name: str, test_fraction: float, seed: int,
                  overwrite: bool, layout: Layout | None, wait: bool = False) -> DatasetInfo:
    """Write in-memory arrays: their own test split, else a seeded random one."""
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
    return store.write(info, splits, overwrite=overwrite, layout=layout, wait=wait)


def import_tables(store: Store, tables: Tables, name: str, target: str | None, features: list[str] | None,
                  test_fraction: float, seed: int, overwrite: bool, layout: Layout,
                  wait: bool = False, task: str | None = None) -> DatasetInfo:
    """Stream a table source in two passes: the target column alone, then every chunk to the writer.

    Each source split goes to its own stored split; without a test split of its own, a seeded
    ``test_fraction`` of the train rows is the test split.
    """
    check_task_choice(task)
    source, first = tables.source, tables.paths[0]
    stored = tables.pipeline_info()  # Parquet written by this pipeline: keep its columns' meaning
    target = target or (stored.label_column if stored else None)
    if not target:
        raise DataError(f"{source}: --target COLUMN is required for a table source")
    if target not in tables.columns:
        raise DataError(f"{first}: no target column '{target}' (columns: {', '.join(tables.columns)})")
    names = pick_features(first, tables.columns, target, features)
    as_stored = stored is not None and target == stored.label_column and names == [stored.feature_column]
    plan, rows = _plan_labels(tables, target, stored if as_stored else None, task)
    if sum(rows.values()) == 0:
        raise DataError(f"{source}: no rows")
    for split, count in rows.items():
        if count == 0:
            raise DataError(f"{source}: the {split} split has no rows")
    is_test = None if "test" in tables.splits else test_mask(rows["train"], test_fraction, seed)
    columns = FeaturePlan.of(tables, names)
    if as_stored:
        columns.dtype = stored.feature_dtype
    template = DatasetInfo(
        name=name, task=plan.task, feature_shape=columns.shape, feature_dtype=columns.dtype,
        label_shape=stored.label_shape if as_stored else (),
        label_dtype=stored.label_dtype if as_stored else plan.dtype,
        num_classes=plan.num_classes, class_names=plan.class_names,
        feature_column=stored.feature_column if as_stored else "x",
        label_column=stored.label_column if as_stored else "y", source=source,
        feature_names=list(stored.feature_names) if as_stored else list(names),
        target=stored.target if as_stored else target)
    with store.writer(template, overwrite, layout, wait) as writer:
        for split in ("train", "test", *tables.splits):
            writer.add_split(split)
        for split, paths in tables.splits.items():
            row = 0
            for chunk in tables.chunks(names + [target], names, paths):
                x = columns.array(chunk)
                label = chunk.batch.column(chunk.batch.schema.get_field_index(target))
                y = to_numpy(label).astype(template.label_dtype) if as_stored else plan.encode(label)
                check_rows(chunk.path, x, y, plan.task, plan.num_classes, chunk.first_row)
                append_rows(writer, split, x, y, is_test, row)
                row += len(x)
            if row != rows[split]:
                raise DataError(f"{source}: {row} {split} rows on the second read but {rows[split]} on the first "
                                "(changed while read?)")
        return writer.commit()


def _plan_labels(tables: Tables, target: str, stored: DatasetInfo | None,
                 task: str | None = None) -> tuple[LabelPlan, dict[str, int]]:
    """First pass over the target column of every split: rows per split and how labels are encoded.

    One scan over all splits, so a class id means the same in train, test and validation.
    """
    def scan(kind: str) -> tuple[LabelScan, dict[str, int]]:
        found, rows = LabelScan(target, kind=kind, keep_floats=task == "classification"), {}
        for split, paths in tables.splits.items():
            before = found.rows
            for chunk in tables.chunks([target], paths=paths):
                if stored is None:
                    found.update(chunk.path, chunk.batch.column(0), chunk.first_row)
                else:
                    found.rows += chunk.batch.num_rows
            rows[split] = found.rows - before
        return found, rows

    labels, rows = scan("int")
    if stored is not None:
        if task is not None and task != stored.task:
            raise DataError(f"{tables.source}: holds a {stored.task} dataset written by this pipeline; "
                            f"--task {task} cannot change it")
        return LabelPlan(stored.task, stored.num_classes, stored.class_names, None, "stored"), rows
    if labels.kind == "string" and (labels.uniques_dropped or not all(isinstance(v, str) for v in labels.uniques)):
        labels, rows = scan("string")  # numbers first, text later: collect the distinct values again, as text
    return LabelPlan.from_scan(labels, tables.source, task), rows


def ensure_dataset(store: Store, name: str) -> DatasetInfo:
    """The dataset's info, importing a built-in of the same name on first use.

    Safe when several processes start at once: one imports under the store lock, the others
    wait for it and then use its result.
    """
    if store.exists(name) or name not in BUILTINS:
        return store.info(name)
    with store.lock(wait=True, what=f"import '{name}'"):
        if not store.exists(name):
            import_dataset(store, f"builtin:{name}", name)
    return store.info(name)
