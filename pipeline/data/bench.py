"""Reader throughput: the shuffled streaming reader against a plain pyarrow read of the same files.

``reader_throughput`` is a plain function for the benchmark suite (and scripts/bench_data):
one epoch of device batches from ``StreamingReader`` versus ``pq.read_table(files)`` converted
to numpy, in the same process, best of ``repeats`` each. The plain read does less work (no
shuffle, no checks, no device transfer), so the ratio is a lower bound on the reader's cost.
"""

from __future__ import annotations

import time

import jax
import pyarrow.parquet as pq

from pipeline.data.stream import StreamingReader
from pipeline.data.tensors import to_numpy


def _plain(store, name: str, split: str) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of reading the split whole into numpy."""
    info = store.info(name)
    started, cpu = time.perf_counter(), time.process_time()
    table = pq.read_table(store.files(name, split), filesystem=store.fs)
    x, y = to_numpy(table.column(info.feature_column)), to_numpy(table.column(info.label_column))
    elapsed = time.perf_counter() - started, time.process_time() - cpu
    if not len(x) == len(y) == info.rows[split]:
        raise RuntimeError("plain read returned the wrong number of rows")
    return elapsed


def _streaming(reader: StreamingReader, epoch: int) -> tuple[float, float]:
    """Wall and CPU seconds of one epoch of device batches."""
    started, cpu = time.perf_counter(), time.process_time()
    last = None
    it = reader.iterate(epoch * reader.steps_per_epoch)
    for _ in range(reader.steps_per_epoch):
        last = next(it)
    jax.block_until_ready(last)
    elapsed = time.perf_counter() - started, time.process_time() - cpu
    it.close()
    return elapsed


def reader_throughput(store, name: str, split: str = "train", batch_size: int = 1024, shuffle_buffer: int = 16384,
                      prefetch: int = 4, read_ahead: int | None = None, repeats: int = 2, seed: int = 0) -> dict:
    """Examples/s and MB/s of the streaming reader and of the plain read, and their ratio.

    Best of ``repeats`` by wall time; CPU seconds (every thread of the process) are reported too,
    since on a shared machine they vary less than wall time.
    """
    info = store.info(name)
    rows, row_bytes = info.rows[split], info.row_bytes
    _plain(store, name, split)  # warm the page cache and the allocator for both
    with StreamingReader(store, name, split, batch_size, seed, shuffle_buffer, prefetch,
                         read_ahead=read_ahead) as reader:
        streamed_rows = reader.steps_per_epoch * reader.local_batch
        plain_s, stream_s = [], []
        for r in range(repeats):
            plain_s.append(_plain(store, name, split))
            stream_s.append(_streaming(reader, r))
    (plain, plain_cpu), (stream, stream_cpu) = min(plain_s), min(stream_s)
    result = {
        "dataset": name, "split": split, "rows": rows, "mb": rows * row_bytes / 1e6,
        "batch_size": batch_size, "shuffle_buffer": shuffle_buffer, "prefetch": prefetch,
        "read_ahead": reader.read_ahead,
        "device": str(jax.devices()[0].platform),
        "plain_s": plain, "plain_cpu_s": plain_cpu, "stream_cpu_s": stream_cpu,
        "plain_examples_per_s": rows / plain, "plain_mb_per_s": rows * row_bytes / 1e6 / plain,
        "stream_s": stream, "stream_examples_per_s": streamed_rows / stream,
        "stream_mb_per_s": streamed_rows * row_bytes / 1e6 / stream,
    }
    result["ratio"] = result["stream_examples_per_s"] / result["plain_examples_per_s"]
    return result
