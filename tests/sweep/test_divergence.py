"""A member whose loss turns non-finite is frozen and marked; the rest of its population is untouched."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from tests.sweep.conftest import TINY, sweep

SPACE = ["optimizer.learning_rate=choice(3e-3;1e30;1e-2)", "seed=range(2)"]


def test_diverged_member_is_isolated(home):
    population = sweep("digits_mlp", *TINY, *SPACE)
    solo = sweep("digits_mlp", *TINY, *SPACE, "--no-vmap")
    statuses = [r["status"] for r in population.trials]
    assert statuses == ["done", "done", "diverged", "diverged", "done", "done"]
    assert [r["status"] for r in solo.trials] == statuses
    for a, b in zip(population.trials, solo.trials, strict=True):
        if a["status"] == "diverged":
            # The first update with lr=1e30 makes the second loss infinite: frozen at step 1.
            assert a["stopped_at"] == b["stopped_at"] == 2
            assert a["steps"] == 0
            steps, loss = population.curve(a["trial"])
            np.testing.assert_array_equal(steps, [1])
            assert np.isfinite(loss).all()
            assert np.isnan(a["final_test_loss"]) and a["best_step"] is None
        else:
            assert a["steps"] == 40 and a["stopped_at"] is None
            np.testing.assert_allclose(a["final_test_loss"], b["final_test_loss"], rtol=1e-5)
            np.testing.assert_allclose(population.curve(a["trial"])[1], solo.curve(b["trial"])[1], rtol=1e-5)
    # Summary and ranking skip diverged trials.
    assert population.summary["status"] == {"done": 4, "diverged": 2}
    assert population.summary["best"]["hyperparameters"]["optimizer.learning_rate"] != 1e30
    # Every recorded value is finite: nothing after the divergence reached the curves.
    values = np.asarray(pq.read_table(population.folder / "curves.parquet").column("value"))
    assert np.isfinite(values).all()
