"""Images into the store: decoded in chunks by a pool of workers, appended to the dataset writer.

Two sources: an image folder (image_folder.py) and Parquet files whose feature column holds
images as Hugging Face ``datasets`` writes them, a struct ``{bytes, path}`` a row. Pixels are
stored as uint8 tensors (H, W, C); the writer keeps per-channel statistics of the train split.

Memory is bounded: a chunk of about ``--block-mb`` of decoded pixels (at most ``CHUNK_ROWS``
images) is decoded while the one before it is written, two chunks at most in flight, and the
writer holds one row group per split. The first train image fixes the shape unless
``--image-size`` and ``--channels`` do; an image of another size or channel count is one line
naming it and the first image. Any error deletes the staging folder: nothing is stored.

Workers: a thread pool by default (Pillow releases the GIL while it decodes, converts and
resizes; no process start-up, nothing pickled), or a process pool (``pool="process"``:
forkserver, so a process that has started JAX is never forked). docs/benchmarks.md has the
measured figures of both.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.data.dataset import DatasetInfo
from pipeline.data.image_folder import ImageFolder
from pipeline.data.images import ImageOptions, decode, peek
from pipeline.data.labels import LabelPlan
from pipeline.data.layout import Layout
from pipeline.data.progress import ImportProgress
from pipeline.data.sources import append_rows, test_mask
from pipeline.data.tables import Tables
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError, check_rows

CHUNK_ROWS = 1024  # images a chunk at most: the progress bar moves, the pool stays busy
POOLS = ("thread", "process")


def workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def make_pool(kind: str) -> Executor:
    if kind not in POOLS:
        raise DataError(f"image decoding pool must be {' or '.join(POOLS)}, not '{kind}'")
    if kind == "process":
        return ProcessPoolExecutor(workers(), mp_context=multiprocessing.get_context("forkserver"))
    return ThreadPoolExecutor(workers(), thread_name_prefix="decode")


def _read_file(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_file(path) as handle:
            return handle.read()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read: {str(exc).strip().splitlines()[0]}") from None


def _decode_file(fs: pafs.FileSystem, options: ImageOptions, path: str) -> np.ndarray:
    return decode(_read_file(fs, path), path, options)


def _decode_bytes(options: ImageOptions, item: tuple[bytes, str]) -> np.ndarray:
    return decode(item[0], item[1], options)


class ShapeCheck:
    """Every image must have the first one's (H, W, C); the error names both files."""

    def __init__(self, shape: tuple[int, int, int], first: str, options: ImageOptions):
        self.shape, self.first, self.options = shape, first, options

    def stack(self, images: list[np.ndarray], names: list[str]) -> np.ndarray:
        for image, name in zip(images, names):
            if image.shape != self.shape:
                raise DataError(self._mismatch(image.shape, name))
        return np.stack(images) if images else np.zeros((0, *self.shape), np.uint8)

    def _mismatch(self, shape: tuple[int, ...], name: str) -> str:
        (h, w, c), (H, W, C) = shape, self.shape
        if (h, w) != (H, W):
            return (f"{name}: {h}x{w} pixels but {self.first} has {H}x{W}; images of mixed sizes need "
                    "--image-size H,W")
        kinds = {1: "grayscale", 3: "color"}
        return f"{name}: {kinds[c]} but {self.first} is {kinds[C]}; mixed images need --channels 1 or 3"


def first_shape(data: bytes, where: str, options: ImageOptions) -> tuple[int, int, int]:
    """(H, W, C) of the stored images: the options', else the first image's (from its header)."""
    (height, width), channels = peek(data, where)
    return (*(options.size or (height, width)), options.channels or channels)


def rows_per_chunk(shape: tuple[int, int, int], layout: Layout) -> int:
    return max(1, min(CHUNK_ROWS, layout.read_block_bytes // int(np.prod(shape))))


def decoded(pool: Executor, work: Callable, chunks: Iterator[tuple[list, list[str], object]],
            progress: ImportProgress) -> Iterator[tuple[list[np.ndarray], list[str], object]]:
    """Each chunk's images in order, the next chunk decoding while the caller writes this one."""
    pending: deque = deque()
    per_task = 1 if isinstance(pool, ThreadPoolExecutor) else 16  # processes: fewer, larger messages
    for items, names, extra in chunks:
        pending.append((pool.map(work, items, chunksize=per_task), names, extra))
        if len(pending) == 2:
            results, names_, extra_ = pending.popleft()
            images = list(results)
            progress.advance(len(images))
            yield images, names_, extra_
    while pending:
        results, names_, extra_ = pending.popleft()
        images = list(results)
        progress.advance(len(images))
        yield images, names_, extra_


def _template(name: str, source: str, shape: tuple[int, int, int], plan: LabelPlan,
              target: str = "") -> DatasetInfo:
    return DatasetInfo(name=name, task=plan.task, feature_shape=shape, feature_dtype="uint8", label_shape=(),
                       label_dtype=plan.dtype, num_classes=plan.num_classes, class_names=list(plan.class_names),
                       source=source, target=target)


def import_image_folder(store, folder: ImageFolder, name: str, options: ImageOptions, test_fraction: float,
                        seed: int, overwrite: bool, layout: Layout, wait: bool = False,
                        pool: str = "thread") -> DatasetInfo:
    """Decode every image of ``folder``; the class folder is the label."""
    first = folder.splits["train"][0]
    shape = first_shape(_read_file(folder.fs, first), first, options)
    check = ShapeCheck(shape, first, options)
    plan = LabelPlan("classification", len(folder.class_names), folder.class_names, None, "int")
    rows = {split: len(paths) for split, paths in folder.splits.items()}
    is_test = None if "test" in folder.splits else test_mask(rows["train"], test_fraction, seed)
    step = rows_per_chunk(shape, layout)

    def chunks() -> Iterator[tuple[list, list[str], object]]:
        for split, paths in folder.splits.items():
            for start in range(0, len(paths), step):
                names = paths[start:start + step]
                yield names, names, (split, start, folder.labels[split][start:start + step])

    work = functools.partial(_decode_file, folder.fs, options)
    template = _template(name, folder.source, shape, plan)
    with store.writer(template, overwrite, layout, wait) as writer, make_pool(pool) as executor, \
            ImportProgress(sum(rows.values()), "decoding images") as progress:
        try:
            for split in ("train", "test", *folder.splits):
                writer.add_split(split)
            for images, names, (split, start, labels) in decoded(executor, work, chunks(), progress):
                append_rows(writer, split, check.stack(images, names), np.asarray(labels, np.int32), is_test, start)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return writer.commit()


# -- Parquet with an image column --------------------------------------------------------------------

def is_image_type(t: pa.DataType) -> bool:
    """Hugging Face's ``Image`` feature in Parquet: a struct with a binary ``bytes`` field."""
    if not pa.types.is_struct(t):
        return False
    names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
    return "bytes" in names and (pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"]))


def image_columns(tables: Tables) -> list[str]:
    return [c for c in tables.columns if is_image_type(tables.column_type(c))]


def hf_class_names(tables: Tables, target: str, plan: LabelPlan) -> list[str]:
    """A ``ClassLabel`` target's names from the files' Hugging Face metadata, when its ids are the stored ones."""
    schema = getattr(tables, "schemas", [None])[0]
    metadata = (schema.metadata or {}) if schema is not None else {}
    try:
        features = json.loads(metadata.get(b"huggingface", b"{}")).get("info", {}).get("features", {})
        names = features.get(target, {}).get("names")
    except (ValueError, AttributeError):
        return plan.class_names
    if (isinstance(names, list) and all(isinstance(n, str) for n in names) and plan.values is None
            and plan.kind == "int" and len(names) == plan.num_classes):
        return list(names)
    return plan.class_names


def _image_bytes(path: str, column_name: str, column: pa.Array, first_row: int) -> list[bytes]:
    data = pc.struct_field(column, "bytes")
    missing = pc.is_null(data)
    if pc.any(missing).as_py():
        row = first_row + int(np.argmax(to_numpy(missing)))
        raise DataError(f"{path}: column '{column_name}' row {row} has no image bytes (images given by path only "
                        "are not read)")
    return data.to_pylist()


def import_image_table(store, tables: Tables, name: str, column: str, target: str, plan: LabelPlan,
                       rows: dict[str, int], options: ImageOptions, test_fraction: float, seed: int,
                       overwrite: bool, layout: Layout, wait: bool = False, pool: str = "thread") -> DatasetInfo:
    """Decode the image column ``column`` of every row; ``plan`` encodes ``target`` (imports.py made it)."""
    where = f"column '{column}'"
    first_chunk = next((c for c in tables.chunks([column], paths=tables.splits["train"]) if c.batch.num_rows), None)
    if first_chunk is None:
        raise DataError(f"{tables.source}: the train split has no rows")
    first_name = f"{first_chunk.path}: {where} row {first_chunk.first_row}"
    first_bytes = _image_bytes(first_chunk.path, column, first_chunk.batch.column(0).slice(0, 1), 0)[0]
    shape = first_shape(first_bytes, first_name, options)
    check = ShapeCheck(shape, first_name, options)
    is_test = None if "test" in tables.splits else test_mask(rows["train"], test_fraction, seed)
    plan.class_names = hf_class_names(tables, target, plan)
    found = dict.fromkeys(tables.splits, 0)

    def chunks() -> Iterator[tuple[list, list[str], object]]:
        for split, paths in tables.splits.items():
            for chunk in tables.chunks([column, target], paths=paths):
                batch, n = chunk.batch, chunk.batch.num_rows
                data = _image_bytes(chunk.path, column, batch.column(0), chunk.first_row)
                labels = plan.encode(batch.column(1))
                for start in range(0, n, rows_per_chunk(shape, layout)):
                    stop = min(n, start + rows_per_chunk(shape, layout))
                    names = [f"{chunk.path}: {where} row {chunk.first_row + i}" for i in range(start, stop)]
                    yield (list(zip(data[start:stop], names)), names,
                           (split, chunk.path, chunk.first_row + start, labels[start:stop]))

    work = functools.partial(_decode_bytes, options)
    template = _template(name, tables.source, shape, plan, target)
    with store.writer(template, overwrite, layout, wait) as writer, make_pool(pool) as executor, \
            ImportProgress(sum(rows.values()), "decoding images") as progress:
        try:
            for split in ("train", "test", *tables.splits):
                writer.add_split(split)
            for images, names, (split, path, first_row, labels) in decoded(executor, work, chunks(), progress):
                x = check.stack(images, names)
                check_rows(path, x, labels, plan.task, plan.num_classes, first_row)
                append_rows(writer, split, x, labels, is_test, found[split])
                found[split] += len(x)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        for split, count in found.items():
            if count != rows[split]:
                raise DataError(f"{tables.source}: {count} {split} rows on the second read but {rows[split]} on "
                                "the first (changed while read?)")
        return writer.commit()
