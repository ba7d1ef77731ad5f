"""A vmapped population member trains exactly like its solo run; results are tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.sweep.conftest import TINY, TRACES, pipeline, sweep

# Every kind of traced hyperparameter differs across the 5 members of one population.
SPACE = [
    "optimizer.learning_rate=loguniform(1e-3,3e-2)", "optimizer.weight_decay=uniform(0,0.05)",
    "optimizer.b1=uniform(0.8,0.95)", "seed=range(100)", "data_seed=range(3)",
    "model.dropout=uniform(0,0.3)", "label_smoothing=uniform(0,0.2)",
    "--strategy", "random", "--trials", "5", "--search-seed", "7",
]


@pytest.fixture(scope="module")
def pair(home):
    TRACES.clear()
    population = sweep("digits_mlp", *TINY, *SPACE)
    assert TRACES["train"] == 1 and TRACES["eval"] == 1  # one program for all five members
    solo = sweep("digits_mlp", *TINY, *SPACE, "--no-vmap")
    return population, solo


def test_members_equal_their_solo_runs(pair):
    population, solo = pair
    assert population.summary["vmap"] and not solo.summary["vmap"]
    for key in ("optimizer.learning_rate", "optimizer.weight_decay", "seed", "model.dropout"):
        assert len({row[key] for row in population.trials}) == 5, key
    assert len(population.trials) == len(solo.trials) == 5
    for a, b in zip(population.trials, solo.trials, strict=True):
        assert a["overrides"] == b["overrides"]
        assert a["status"] == b["status"] == "done"
        assert a["steps"] == b["steps"] == 40
        np.testing.assert_allclose(a["final_test_loss"], b["final_test_loss"], rtol=1e-5)
        assert a["final_test_accuracy"] == b["final_test_accuracy"]
        steps_a, loss_a = population.curve(a["trial"])
        steps_b, loss_b = solo.curve(b["trial"])
        np.testing.assert_array_equal(steps_a, np.arange(1, 41))
        np.testing.assert_array_equal(steps_a, steps_b)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)


def test_best_trial_reproduces_with_pipeline_train(pair):
    population, _ = pair
    best = population.summary["best"]
    ranked = sorted(population.trials, key=lambda r: (-r["final_val_accuracy"], r["trial"]))  # ranked on validation
    assert best["trial"] == ranked[0]["trial"]
    assert set(best["hyperparameters"]) == {"optimizer.learning_rate", "optimizer.weight_decay", "optimizer.b1",
                                            "seed", "data_seed", "model.dropout", "label_smoothing"}
    r = pipeline("train", "digits_mlp", *best["overrides"], "--json", "--no-progress")
    assert r.code == 0, r.err
    solo = json.loads(r.out.strip().splitlines()[-1])
    for name, value in best["metrics"].items():
        assert solo["metrics"][name] == pytest.approx(value, rel=1e-5), name


def test_tables_show_and_plot(pair):
    population, _ = pair
    folder = population.folder
    wait_for(folder / "curves.png")  # the plots are drawn by a background process, hparams.png first
    assert {"sweep.json", "trials.parquet", "curves.parquet", "summary.json", "hparams.png", "curves.png"} <= {
        p.name for p in folder.iterdir()}
    row = population.trials[0]
    for column in ("trial", "group", "status", "steps", "wall_s", "optimizer.learning_rate", "seed",
                   "final_test_accuracy", "final_test_loss", "best_test_accuracy", "best_step", "overrides"):
        assert column in row, column
    r = pipeline("runs", "show", str(folder))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "status"])
    assert "optimizer.learning_rate" in lines[header] and "val/accuracy" in lines[header]
    assert lines[header + 1].split()[0] == str(population.summary["best"]["trial"])
    assert len(lines) == header + 1 + 5
    for png in ("hparams.png", "curves.png"):
        (folder / png).unlink()
    r = pipeline("runs", "plot", str(folder))
    assert r.code == 0, r.err
    for png in ("hparams.png", "curves.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(Path(folder / png)) in r.out
