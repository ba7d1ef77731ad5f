"""Batches per second from a stored dataset's Parquet files: the streaming reader against Grain.

``python -m pipeline.bench.grain_stream [--rows N] [--batch B] [--epochs E] [--cores 2] [--out F]``
writes N synthetic 32x32x3 uint8 images (10 classes) to a temporary store in row groups of
``--row-group-mb`` and files of ``--file-mb``, then reads the training split's files, shuffled
and cut into batches of B, E epochs after a warm-up epoch (page cache warm, threads and workers
started), with the process held to ``--cores`` cores:

* ``stream_reader (host)``: ``StreamingReader.iterate(on_device=False)``, what a streamed run's
  feed reads (row-group order drawn per epoch, a shuffle buffer of ``data.shuffle_buffer`` rows,
  a thread per core reading row groups ahead, every page checksum and row checked);
* ``stream_reader (device)``: the same, each batch placed on the device (the run's own path);
* ``grain threads``: ``grain.experimental.ParquetIterDataset`` over the same files, repeated,
  ``WindowShuffleIterDataset`` with the same window, rows reshaped to (H, W, C), ``batch``, and a
  ``ThreadPrefetchIterDataset`` of the same depth (what a Grain user writes on one process);
* ``grain processes``: the same pipeline behind ``mp_prefetch`` with one worker per core.

Both yield numpy (x, y) batches of the same shapes and dtypes; over one epoch both hold every
row exactly once when B divides the rows (tests/bench/test_data_benches.py checks that).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config

SHAPE = (32, 32, 3)
MIB = 1024**2


@dataclass
class Row:
    impl: str
    batches: int
    seconds: float
    batch: int

    @property
    def batches_per_s(self) -> float:
        return self.batches / self.seconds


def write_dataset(store, name: str, rows: int, row_group_mb: float, file_mb: float, seed: int = 0):
    """``rows`` random uint8 images; the label is the row's id modulo 10 (ids kept in the pixels' first bytes)."""
    from pipeline.data import Split
    from pipeline.data.dataset import describe
    from pipeline.data.layout import Layout

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (rows, *SHAPE), dtype=np.uint8)
    x[:, 0, 0, :] = np.stack([(np.arange(rows) >> s) & 255 for s in (0, 8, 16)], axis=1)  # the row id, readable back
    y = (np.arange(rows) % 10).astype(np.int32)
    splits = {"train": Split(x, y), "test": Split(x[:10], y[:10])}
    info = describe(name, splits, "classification", "synthetic:grain-stream", num_classes=10)
    return store.write(info, splits, layout=Layout(int(row_group_mb * MIB), int(file_mb * MIB)))


def row_ids(x_BxHxWxC: np.ndarray) -> np.ndarray:
    """The ids ``write_dataset`` wrote into each image."""
    corner = x_BxHxWxC[:, 0, 0, :].astype(np.int64)
    return corner[:, 0] | corner[:, 1] << 8 | corner[:, 2] << 16


# -- the two readers -------------------------------------------------------------------------------

def stream_batches(store, name: str, batch: int, shuffle_buffer: int, prefetch: int, on_device: bool,
                   seed: int = 0):
    """The streaming reader and its endless batches (close the reader when done)."""
    from pipeline.data.stream import StreamingReader

    reader = StreamingReader(store, name, "train", batch, seed=seed, shuffle_buffer=shuffle_buffer,
                             prefetch=prefetch)
    return reader, reader.iterate(0, on_device=on_device)


def grain_batches(files: list[str], shape: tuple[int, ...], batch: int, shuffle_buffer: int, prefetch: int,
                  workers: int = 0, epochs: int | None = None, seed: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
    """Grain over the Parquet files: (x, y) numpy batches, ``epochs`` passes (None: forever)."""
    import grain
    import grain.experimental as ge

    rows = ge.ParquetIterDataset(files)  # interleaves up to 16 files; a row is {column: flat numpy}
    rows = ge.RepeatIterDataset(rows, num_epochs=epochs)
    rows = ge.WindowShuffleIterDataset(rows, window_size=shuffle_buffer, seed=seed)
    pairs = rows.map(lambda r: (r["x"].reshape(shape), r["y"]))  # the tensor column comes back flat
    batches = pairs.batch(batch, drop_remainder=True)
    if workers > 0:
        _absl_flags_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    else:
        batches = ge.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
    return iter(batches)


def _absl_flags_parsed() -> None:
    """Grain's workers read absl flags; outside ``absl.app.run`` they must be marked parsed first."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# -- timing ----------------------------------------------------------------------------------------

def time_batches(impl: str, batches: Iterator, warmup: int, count: int, batch: int) -> Row:
    for _ in range(warmup):
        last = next(batches)
    start = time.perf_counter()
    for _ in range(count):
        last = next(batches)
    if hasattr(last[0], "block_until_ready"):
        last[0].block_until_ready()
    return Row(impl, count, time.perf_counter() - start, batch)


def hold_cores(cores: int) -> int:
    """Keep this process (and the workers it starts) on its first ``cores`` cores; the count held."""
    if not hasattr(os, "sched_setaffinity"):
        return os.cpu_count() or 1
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])
    return len(os.sched_getaffinity(0))


def measure(store, name: str, batch: int, epochs: int, cores: int) -> list[Row]:
    defaults = Config().data
    buffer, prefetch = defaults.shuffle_buffer, defaults.prefetch
    info = store.info(name)
    per_epoch = info.rows["train"] // batch
    rows = []
    for on_device in (False, True):
        reader, batches = stream_batches(store, name, batch, buffer, prefetch, on_device)
        try:
            rows.append(time_batches(f"stream_reader ({'device' if on_device else 'host'})", batches, per_epoch,
                                     epochs * per_epoch, batch))
        finally:
            batches.close()
            reader.close()
    files = store.files(name, "train")
    for workers, impl in ((0, "grain threads"), (cores, "grain processes")):
        batches = grain_batches(files, info.feature_shape, batch, buffer, prefetch, workers)
        try:
            rows.append(time_batches(impl, batches, per_epoch, epochs * per_epoch, batch))
        finally:
            batches.close()  # stops grain's threads or worker processes
    return rows


def table(rows: list[Row]) -> str:
    base = rows[0].batches_per_s
    lines = [f"{'impl':24s} {'batches':>8s} {'batches/s':>10s} {'rows/s':>10s} {'vs stream_reader (host)':>24s}"]
    for r in rows:
        lines.append(f"{r.impl:24s} {r.batches:8d} {r.batches_per_s:10.1f} {r.batches_per_s * r.batch:10,.0f} "
                     f"{r.batches_per_s / base:23.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (one more warms up)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--row-group-mb", type=float, default=1.0)
    parser.add_argument("--file-mb", type=float, default=16.0)
    parser.add_argument("--out", help="write the results here as Parquet")
    args = parser.parse_args(argv)
    from pipeline.data import Store

    cores = hold_cores(args.cores)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store")
        write_dataset(store, "grain-stream", args.rows, args.row_group_mb, args.file_mb)
        files = store.files("grain-stream", "train")
        rows = measure(store, "grain-stream", args.batch, args.epochs, cores)
    defaults = Config().data
    print(f"{args.rows} rows of {'x'.join(map(str, SHAPE))} uint8 in {len(files)} files "
          f"(row groups of {args.row_group_mb} MiB), batch {args.batch}, shuffle window {defaults.shuffle_buffer}, "
          f"prefetch {defaults.prefetch}, {cores} cores, {args.epochs} epochs timed")
    print(table(rows))
    if args.out:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"impl": [r.impl for r in rows], "batches": [r.batches for r in rows],
                                 "seconds": [r.seconds for r in rows], "batch": [r.batch for r in rows],
                                 "batches_per_s": [r.batches_per_s for r in rows]}), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
