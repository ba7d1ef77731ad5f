"""The data suite: how fast the store's readers turn Parquet files into batches.

One unit is one pass over the training split, counted in batches of the point's batch
size. ``pyarrow_read`` is the plain baseline any user has (``pyarrow.parquet.read_table``
then the columns to numpy); ``store_read`` is the store's whole-split read (the
device-resident path); ``stream_reader`` is the shuffled streaming reader with its
prefetch thread, batches placed on the device (when this build has one), with the shuffle
buffer and prefetch depth of the point's config (``data.shuffle_buffer=``,
``data.prefetch=`` on the command line). Files are read through the operating system's
page cache, warm after the first pass. The plain read does less work (no shuffle, no
checks, no device transfer), so its ratio bounds the reader's cost from below; CPU
seconds (every thread of the process) are kept beside wall time, since on a shared
machine they vary less.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import jax
import numpy as np
import pyarrow.parquet as pq

from pipeline.bench.measure import UNAVAILABLE, Measurement, Runner, missing
from pipeline.bench.points import BenchError, Point
from pipeline.bench.results import READERS
from pipeline.bench.schedule import SKIPPED, time_together
from pipeline.bench.timing import Deadline
from pipeline.config import Config, apply_overrides
from pipeline.data import DatasetInfo, Store


class _ReadRunner(Runner):
    def __init__(self, impl: str, store: Store, info: DatasetInfo, batch: int):
        self.impl = impl
        super().__init__()
        self.store, self.info, self.batch = store, info, batch
        self.steps_per_unit = info.rows["train"] // batch
        self.m.bytes_per_step = float(batch * row_bytes(info))

    def setup(self) -> None:
        if self.steps_per_unit < 1:
            raise BenchError(f"batch {self.batch} is more than the {self.info.rows['train']} rows of "
                             f"'{self.info.name}'")
        self.run(1)  # fills the page cache before any timing

    def close(self) -> None:
        pass


def row_bytes(info: DatasetInfo) -> int:
    x = np.dtype(info.feature_dtype).itemsize * int(np.prod(info.feature_shape, dtype=np.int64))
    return x + np.dtype(info.label_dtype).itemsize * int(np.prod(info.label_shape, dtype=np.int64))


def plain_numpy(column) -> np.ndarray:
    """A column as numpy with pyarrow alone (tensor columns through their extension type)."""
    array = column.combine_chunks()
    if hasattr(array, "to_numpy_ndarray"):
        return array.to_numpy_ndarray()
    return array.to_numpy(zero_copy_only=False)


class PyarrowRead(_ReadRunner):
    def run(self, units: int) -> None:
        files = self.store.files(self.info.name, "train")
        filesystem = getattr(self.store, "fs", None)
        for _ in range(units):
            table = pq.read_table(files, filesystem=filesystem) if filesystem else pq.read_table(files)
            x = plain_numpy(table.column(self.info.feature_column))
            y = plain_numpy(table.column(self.info.label_column))
        assert len(x) == len(y)


class StoreRead(_ReadRunner):
    def run(self, units: int) -> None:
        for _ in range(units):
            split = self.store.read(self.info.name, "train")
        assert len(split) > 0


class StreamRead(_ReadRunner):
    def __init__(self, reader_cls, store: Store, info: DatasetInfo, batch: int, shuffle_buffer: int, prefetch: int):
        super().__init__("stream_reader", store, info, batch)
        self.make = lambda: reader_cls(store, info.name, "train", batch, seed=0, shuffle_buffer=shuffle_buffer,
                                       prefetch=prefetch)
        self.reader = self.batches = None

    def setup(self) -> None:
        self.reader = self.make()
        self.steps_per_unit = self.reader.steps_per_epoch
        self.batches = self.reader.iterate(0)
        super().setup()

    def run(self, units: int) -> None:
        for _ in range(units * self.steps_per_unit):
            batch = next(self.batches)
        jax.block_until_ready(batch)

    def close(self) -> None:
        if self.batches is not None:
            self.batches.close()
        if self.reader is not None:
            self.reader.close()
        self.reader = self.batches = None


def streaming_reader_class():
    """The streaming reader of the data store, or None when this build has none."""
    try:
        return importlib.import_module("pipeline.data.stream").StreamingReader
    except (ImportError, AttributeError):
        return None


def reader_config(point: Point, name: str) -> Config:
    """The point's batch size and reader settings (``data.*`` overrides) for dataset ``name``."""
    return apply_overrides(Config(data=name, batch_size=point.batch), list(point.overrides))


def measure_readers(point: Point, store: Store, name: str, echo: Callable[[str], None],
                    peers: tuple[str, ...] = READERS, deadline: Deadline | None = None) -> list[Measurement]:
    info = store.info(name)
    cfg = reader_config(point, name)
    batch = cfg.batch_size
    done: dict[str, Measurement] = {}
    runners: list[Runner] = [PyarrowRead("pyarrow_read", store, info, batch),
                             StoreRead("store_read", store, info, batch)]
    reader_cls = streaming_reader_class()
    if reader_cls is None:
        done["stream_reader"] = missing("stream_reader", UNAVAILABLE, "no streaming reader in this build")
    else:
        runners.append(StreamRead(reader_cls, store, info, batch, cfg.data.shuffle_buffer, cfg.data.prefetch))
    for r in [r for r in runners if r.impl not in peers]:
        done[r.impl] = missing(r.impl, SKIPPED, "not in --peers")
    time_together([r for r in runners if r.impl in peers], point.budget, done, echo, deadline)
    return [done[impl] for impl in READERS]
