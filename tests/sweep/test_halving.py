"""Successive halving: at each rung the worse half of a population stops; stopped trials keep their record."""

from __future__ import annotations

import numpy as np
import pytest

from tests.sweep.conftest import TRACES, sweep

ARGS = ["model.hidden=16", "steps=60", "eval_every=20", "batch_size=32", "--no-progress",
        "optimizer.learning_rate=choice(1e-4;1e-3;1e-2;3e-2)", "--rungs", "20,40", "--keep", "0.5"]


@pytest.mark.heavy
def test_successive_halving_bookkeeping(home):
    TRACES.clear()
    s = sweep("digits_mlp", *ARGS)
    # 4 members, then 2 (repacked at step 20), then 1 (repacked at step 40): three program sizes.
    assert TRACES["train"] == 3
    status = {r["trial"]: (r["status"], r["stopped_at"], r["steps"]) for r in s.trials}
    assert sorted(status.values()) == [("done", None, 60), ("stopped", 20, 20), ("stopped", 20, 20),
                                       ("stopped", 40, 40)]

    def accuracy_at(trial: int, step: int, split: str = "val") -> float:
        steps, values = s.curve(trial, split, "accuracy")
        return float(values[steps == step][0])

    at20 = sorted(status, key=lambda t: (-accuracy_at(t, 20), t))
    assert [status[t][0] for t in at20[2:]] == ["stopped", "stopped"]  # the worse half, by validation accuracy
    survivors = at20[:2]
    at40 = sorted(survivors, key=lambda t: (-accuracy_at(t, 40), t))
    assert status[at40[1]][:2] == ("stopped", 40) and status[at40[0]][0] == "done"
    for r in s.trials:  # a stopped trial's record is whole up to its rung, and ends there
        steps, _ = s.curve(r["trial"])
        assert steps.max() == r["steps"]
        assert r["final_test_accuracy"] == accuracy_at(r["trial"], r["steps"], "test")
    assert s.summary["best"]["trial"] == at40[0]

    # The same bookkeeping trial by trial (no vmap, no repacking): the same decisions and numbers.
    solo = sweep("digits_mlp", *ARGS, "--no-vmap")
    for a, b in zip(s.trials, solo.trials, strict=True):
        assert (a["status"], a["stopped_at"], a["steps"]) == (b["status"], b["stopped_at"], b["steps"])
        np.testing.assert_allclose(a["final_test_loss"], b["final_test_loss"], rtol=1e-5)
