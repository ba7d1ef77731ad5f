"""Datasets for benchmark points: built-ins as they are, synthetic ones made on first use.

Specs: ``images:HxWxC`` (10-class images in [0, 1]), ``tokens:VOCABxLENGTH`` (random token
sequences; the label is the sequence shifted by one), ``table:ROWSxFEATURES`` (a large
10-class table for reader throughput). Content is random with a fixed seed: benchmarks
need shapes, not meaning. They live in the benchmark's own store, not the user's.
"""

from __future__ import annotations

import numpy as np

from pipeline.bench.points import BenchError
from pipeline.data import Split, Store, ensure_dataset
from pipeline.data.dataset import describe

TRAIN_ROWS = {"images": 8192, "tokens": 1024}
TEST_ROWS = 256


def dataset_name(spec: str) -> str:
    return spec if ":" not in spec else "bench-" + spec.replace(":", "-")


def _dims(spec: str) -> tuple[str, tuple[int, ...]]:
    kind, _, dims = spec.partition(":")
    try:
        return kind, tuple(int(d) for d in dims.split("x"))
    except ValueError:
        raise BenchError(f"bad synthetic data spec '{spec}'") from None


def make(spec: str) -> tuple[dict[str, Split], str, int]:
    """Splits, task and class count of a synthetic spec."""
    kind, dims = _dims(spec)
    rng = np.random.default_rng(0)
    if kind == "images":
        splits = {name: Split(rng.random((rows, *dims), dtype=np.float32),
                              rng.integers(0, 10, rows, dtype=np.int32))
                  for name, rows in (("train", TRAIN_ROWS["images"]), ("test", TEST_ROWS))}
        return splits, "classification", 10
    if kind == "tokens":
        vocab, length = dims
        splits = {}
        for name, rows in (("train", TRAIN_ROWS["tokens"]), ("test", 32)):
            seq = rng.integers(0, vocab, (rows, length + 1), dtype=np.int32)
            splits[name] = Split(seq[:, :-1].copy(), seq[:, 1:].copy())
        return splits, "language_modeling", vocab
    if kind == "table":
        rows, features = dims
        splits = {name: Split(rng.standard_normal((n, features), dtype=np.float32),
                              rng.integers(0, 10, n, dtype=np.int32))
                  for name, n in (("train", rows), ("test", TEST_ROWS))}
        return splits, "classification", 10
    raise BenchError(f"bad synthetic data spec '{spec}': kinds are images, tokens, table")


def ensure(store: Store, spec: str) -> str:
    """The name of the dataset for ``spec`` in ``store``, written there if missing."""
    name = dataset_name(spec)
    if ":" not in spec:
        ensure_dataset(store, name)
        return name
    if not store.exists(name):
        splits, task, classes = make(spec)
        info = describe(name, splits, task, f"synthetic:{spec}", num_classes=classes)
        store.write(info, splits)
    return name
