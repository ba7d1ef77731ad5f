"""The data suite: how fast the store's readers turn Parquet files into batches.

One unit is one pass over the training split, counted in batches of the point's batch
size. ``pyarrow_read`` is the plain baseline any user has (``pyarrow.parquet.read_table``
then the columns to numpy); ``store_read`` is the store's whole-split read (the
device-resident path); ``stream_reader`` is the shuffled streaming reader with its
prefetch thread, batches placed on the device (when this build has one). Files are read
through the operating system's page cache, warm after the first pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import jax
import numpy as np
import pyarrow.parquet as pq

from pipeline.bench.measure import FAILED, UNAVAILABLE, Measurement, Runner, missing
from pipeline.bench.points import Point
from pipeline.bench.results import READERS
from pipeline.bench.timing import RoundRobin
from pipeline.data import DatasetInfo, Store


class _ReadRunner(Runner):
    def __init__(self, impl: str, store: Store, info: DatasetInfo, batch: int):
        self.impl = impl
        super().__init__()
        self.store, self.info, self.batch = store, info, batch
        self.steps_per_unit = info.rows["train"] // batch
        self.m.bytes_per_step = float(batch * row_bytes(info))

    def setup(self) -> None:
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
    def __init__(self, reader_cls, store: Store, info: DatasetInfo, batch: int):
        super().__init__("stream_reader", store, info, batch)
        self.reader = reader_cls(store, info.name, "train", batch, seed=0)
        self.steps_per_unit = self.reader.steps_per_epoch
        self.batches = self.reader.iterate(0)

    def run(self, units: int) -> None:
        for _ in range(units * self.steps_per_unit):
            batch = next(self.batches)
        jax.block_until_ready(batch)

    def close(self) -> None:
        self.batches.close()
        self.reader.close()


def streaming_reader_class():
    """The streaming reader of the data store, or None when this build has none."""
    try:
        return importlib.import_module("pipeline.data.stream").StreamingReader
    except (ImportError, AttributeError):
        return None


def measure_readers(point: Point, store: Store, name: str, echo: Callable[[str], None]) -> list[Measurement]:
    info = store.info(name)
    done: dict[str, Measurement] = {}
    runners: list[Runner] = [PyarrowRead("pyarrow_read", store, info, point.batch),
                             StoreRead("store_read", store, info, point.batch)]
    reader_cls = streaming_reader_class()
    if reader_cls is None:
        done["stream_reader"] = missing("stream_reader", UNAVAILABLE, "no streaming reader in this build")
    else:
        try:
            runners.append(StreamRead(reader_cls, store, info, point.batch))
        except Exception as exc:
            done["stream_reader"] = missing("stream_reader", FAILED, f"{type(exc).__name__}: {exc}")
    rr = RoundRobin(point.budget)
    for r in runners:
        r.setup()
        rr.warm(r.impl, r)
    echo(f"  timing {', '.join(r.impl for r in runners)} round-robin")
    for _ in range(point.budget.rounds):
        for r in runners:
            rr.one_round(r.impl, r)
    for r in runners:
        done[r.impl] = r.result(rr.timing(r.impl, r.steps_per_unit))
        r.close()
    return [done[impl] for impl in READERS]
