"""The resident batch order: a pure function of (seed, step), whatever the call boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.order import EpochOrder

ROWS, BATCH = 103, 10  # 10 steps an epoch, 3 rows dropped each epoch


def test_each_epoch_is_a_seeded_permutation_without_its_tail():
    order = EpochOrder(ROWS, BATCH, seed=7)
    assert order.steps_per_epoch == 10
    for e in range(3):
        rows = order.indices(e * 10, 10)
        assert rows.shape == (10, BATCH) and rows.dtype == np.int32
        assert len(set(rows.ravel().tolist())) == 100  # no row twice in an epoch
        # The documented recipe, so other tools can reproduce a run's batches.
        expected = np.random.default_rng(np.random.SeedSequence([7, e])).permutation(ROWS)[:100]
        np.testing.assert_array_equal(rows.ravel(), expected)
    assert not np.array_equal(order.indices(0, 10), order.indices(10, 10))  # each epoch its own order


@pytest.mark.parametrize("chunks", [[1] * 35, [7, 7, 7, 7, 7], [3, 25, 4, 3], [35]])
def test_any_split_into_calls_gives_the_same_steps(chunks):
    """K steps per call, a resume mid-epoch, calls spanning epochs: the same rows for every step."""
    whole = EpochOrder(ROWS, BATCH, seed=1).indices(0, 35)
    order, step, parts = EpochOrder(ROWS, BATCH, seed=1), 0, []
    for k in chunks:
        parts.append(order.indices(step, k))
        step += k
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    resumed = EpochOrder(ROWS, BATCH, seed=1).indices(13, 22)  # a fresh process resuming at step 13
    np.testing.assert_array_equal(resumed, whole[13:])


def test_seeds_give_different_orders():
    a, b = EpochOrder(ROWS, BATCH, 0).indices(0, 10), EpochOrder(ROWS, BATCH, 1).indices(0, 10)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, EpochOrder(ROWS, BATCH, 0).indices(0, 10))


def test_a_batch_larger_than_the_split_is_refused():
    with pytest.raises(ValueError, match="batch of 200 rows from a split of 103"):
        EpochOrder(ROWS, 200, seed=0)
