"""The batch-wise shuffle buffer: a permutation, independent of how the input is chunked."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.shuffle import shuffled_batches


def chunks_of(n: int, sizes: list[int]):
    rows, start = np.arange(n), 0
    for size in sizes:
        yield rows[start:start + size], -rows[start:start + size]
        start += size


def run(n: int, sizes: list[int], batch: int, capacity: int, seed: int = 0, skip: int = 0):
    return list(shuffled_batches(chunks_of(n, sizes), batch, capacity, np.random.default_rng(seed), skip))


@pytest.mark.parametrize("capacity", [1, 10, 25, 100, 1000])
def test_every_row_exactly_once_and_columns_stay_aligned(capacity):
    batches = run(103, [10] * 10 + [3], batch=10, capacity=capacity)
    assert [len(b[0]) for b in batches] == [10] * 10 + [3]
    rows = np.concatenate([b[0] for b in batches])
    assert sorted(rows) == list(range(103))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), -rows)


def test_the_buffer_bounds_how_far_rows_move():
    batches = run(1000, [50] * 20, batch=10, capacity=40)
    assert batches[0][0].max() < 40  # the first batch comes from the first buffer-full
    # Row r can only leave after it entered: it is never in a batch before step (r - 40) // 10.
    for step, b in enumerate(batches):
        assert b[0].max() < 40 + 10 * (step + 1)


def test_independent_of_chunk_boundaries_and_seeded():
    a = run(200, [200], batch=16, capacity=50)
    b = run(200, [7, 1, 50, 3, 139], batch=16, capacity=50)
    c = run(200, [200], batch=16, capacity=50, seed=1)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_skip_advances_without_gathering():
    full = run(200, [30] * 6 + [20], batch=16, capacity=50)
    skipped = run(200, [30] * 6 + [20], batch=16, capacity=50, skip=5)
    assert skipped[:5] == [None] * 5
    for want, got in zip(full[5:], skipped[5:]):
        np.testing.assert_array_equal(want[0], got[0])
