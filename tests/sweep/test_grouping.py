"""Trials group by their compiled program; populations of a group share it; data order follows data_seed."""

from __future__ import annotations

import json

import numpy as np

from tests.sweep.conftest import TINY, TRACES, sweep


def test_one_compilation_per_model_shape_and_data_order_by_seed(home):
    TRACES.clear()
    # 2 widths x 2 learning rates x data seeds (0, 1, 0): 12 trials in 2 groups of 6, each group cut
    # into 3 populations of 2 by --max-population 2.
    s = sweep("digits_mlp", *TINY, "model.hidden=choice(8;16)", "optimizer.learning_rate=choice(1e-3;1e-2)",
              "data_seed=choice(0;1;0)", "--max-population", "2")
    assert TRACES["train"] == 2 and TRACES["eval"] == 2
    assert s.summary["groups"] == 2 and s.summary["populations"] == 6
    assert [r["group"] for r in s.trials] == [0] * 6 + [1] * 6
    assert [r["model.hidden"] for r in s.trials] == ["8"] * 6 + ["16"] * 6
    assert all(r["status"] == "done" for r in s.trials)
    # Grid order: hidden, learning rate, then data seed 0, 1, 0. Trials `first` and `first + 2`
    # are the same trial in two different populations: the same batches, bit for bit.
    for first in range(0, 12, 3):
        _, a = s.curve(first)
        _, b = s.curve(first + 1)  # another data seed: another batch order from the first step on
        _, c = s.curve(first + 2)
        np.testing.assert_array_equal(a, c)
        assert np.all(a != b)
        assert s.trials[first]["final_test_loss"] == s.trials[first + 2]["final_test_loss"]


def test_finished_sweep_resumes_to_nothing(home):
    s = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;1e-2)")
    before = {p.name: p.read_bytes() for p in (s.folder / "curves.parquet").iterdir()}  # a folder of parts
    TRACES.clear()
    again = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;1e-2)", "--sweep-dir", str(s.folder))
    assert TRACES["train"] == 0  # every trial finished: nothing compiled, nothing run
    assert again.trials == s.trials
    assert {p.name: p.read_bytes() for p in (s.folder / "curves.parquet").iterdir()} == before


def test_a_sweep_folder_of_an_earlier_version_resumes(home):
    """Config keys added since a folder was made (here ``mesh``) take their defaults when it is resumed."""
    s = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;3e-3)")
    description = json.loads((s.folder / "sweep.json").read_text())
    del description["base_config"]["mesh"]
    (s.folder / "sweep.json").write_text(json.dumps(description))
    TRACES.clear()
    again = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;3e-3)", "--sweep-dir", str(s.folder))
    assert TRACES["train"] == 0 and again.trials == s.trials
