"""One engine: a run is a population of one; sweeps stream, stop members early and export trials as runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import PipelineError
from tests.sweep.conftest import TINY, pipeline, sweep

ONE = ["optimizer.learning_rate=choice(0.01)"]  # a sweep of exactly one trial
RUN = ["model.hidden=16", "steps=40", "eval_every=20", "batch_size=32", "optimizer.learning_rate=0.01"]
STREAMED = "data.max_device_bytes=100000"  # digits' training split is ~370 kB: read from disk in batches


def metrics_rows(folder: Path) -> list[tuple]:
    t = pq.read_table(folder / "metrics.parquet").to_pydict()
    return sorted(zip(t["step"], t["split"], t["name"], t["value"], strict=True))


def curve_rows(folder: Path, trial: int) -> list[tuple]:
    t = pq.read_table(folder / "curves.parquet").to_pydict()
    return sorted((s, sp, n, v) for tr, s, sp, n, v in zip(t["trial"], t["step"], t["split"], t["name"], t["value"],
                                                            strict=True) if tr == trial)


def train(home: Path, name: str, *overrides: str) -> Path:
    folder = home / name
    r = pipeline("train", "digits_mlp", *overrides, "--run-dir", str(folder), "--no-progress")
    assert r.code == 0, r.err
    return folder


@pytest.fixture(scope="module")
def one(home):
    run = train(home, "run-one", *RUN)
    solo = sweep("digits_mlp", *TINY, *ONE, "--no-vmap")
    vmapped = sweep("digits_mlp", *TINY, *ONE, "--vmap")
    return run, solo, vmapped


def test_a_population_of_one_is_the_run(one):
    run, solo, vmapped = one
    want = metrics_rows(run)
    assert curve_rows(solo.folder, 0) == want  # the same program, step for step: exactly equal
    got = curve_rows(vmapped.folder, 0)
    assert [r[:3] for r in got] == [r[:3] for r in want]
    np.testing.assert_allclose([r[3] for r in got], [r[3] for r in want], rtol=1e-5, atol=1e-6)


def test_an_exported_trial_is_a_run(one, home):
    run, solo, _ = one
    folder = home / "exported"
    r = pipeline("sweep", "export", str(solo.folder), "--trial", "0", "--run-dir", str(folder))
    assert r.code == 0, r.err
    assert r.out.strip() == str(folder)
    assert metrics_rows(folder) == metrics_rows(run)
    summary = json.loads((folder / "summary.json").read_text())
    row = solo.trials[0]
    assert summary["steps"] == row["steps"] == 40
    assert summary["metrics"]["test/accuracy"] == row["final_test_accuracy"]
    assert summary["metrics"]["test/loss"] == row["final_test_loss"]
    assert summary["best"]["step"] == row["best_step"]

    from pipeline import load_run

    exported, trained = load_run(folder, which="latest"), load_run(run, which="latest")
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(exported(x)), np.asarray(trained(x)))  # the very same weights
    if summary["best"]["step"] == summary["steps"]:  # the final state was the best: kept as the best too
        np.testing.assert_array_equal(np.asarray(load_run(folder)(x)), np.asarray(exported(x)))
    else:  # a population keeps its members' best metrics, not their best weights
        with pytest.raises(PipelineError, match="which='latest'"):
            load_run(folder)

    shown = pipeline("runs", "show", str(folder))
    assert shown.code == 0 and "test/accuracy" in shown.out, shown.err
    resumed = pipeline("train", "digits_mlp", *RUN, "--run-dir", str(folder), "--resume", "--no-progress")
    assert resumed.code == 0, resumed.err
    assert json.loads((folder / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert metrics_rows(folder) == metrics_rows(run)


def test_export_refuses_bad_input_in_one_line(one, home, tmp_path):
    _, solo, _ = one
    for args, expected in [
        (["--trial", "7"], "has no trial 7"),
        (["--trial", "0", "--run-dir", str(home / "run-one")], "already holds a run"),
    ]:
        r = pipeline("sweep", "export", str(solo.folder), *args)
        assert r.code != 0 and expected in r.err, r.err
        assert len(r.err.strip().splitlines()) == 1
    r = pipeline("sweep", "export", str(tmp_path), "--trial", "0")
    assert r.code != 0 and "is not a sweep folder" in r.err


@pytest.mark.heavy
def test_a_streamed_population_equals_its_members_run_alone(home):
    # A streamed split is not carved and digits stores no validation split: the sweep ranks on test, explicitly.
    space = ["optimizer.learning_rate=choice(0.003;0.01;0.03)", STREAMED, "selection.split=test"]
    vmapped = sweep("digits_mlp", *TINY, *space, "--vmap")
    solo = sweep("digits_mlp", *TINY, *space, "--no-vmap")
    run = train(home, "run-streamed", *RUN[:-1], "optimizer.learning_rate=0.003", STREAMED)
    assert curve_rows(solo.folder, 0) == metrics_rows(run)  # a streamed sweep member is its streamed run
    for trial in range(3):
        a, b = curve_rows(vmapped.folder, trial), curve_rows(solo.folder, trial)
        assert [r[:3] for r in a] == [r[:3] for r in b] and len(a) == 2 * 40 + 2 * 2
        np.testing.assert_allclose([r[3] for r in a], [r[3] for r in b], rtol=1e-5, atol=1e-6)


def test_members_stop_early_on_their_own(home):
    # A learning rate of 1e-12 never improves after its first evaluation: it stops after 2 more.
    args = ["optimizer.learning_rate=choice(1e-12;0.01)", "steps=200", "eval_every=20", "patience=2",
            "model.hidden=16", "batch_size=32", "--no-progress"]
    swept = sweep("digits_mlp", *args)
    frozen, learning = swept.trials
    assert frozen["status"] == "early_stopped" and frozen["steps"] == frozen["stopped_at"] == 60
    steps, _ = swept.curve(0)
    assert steps.max() == 60
    assert learning["steps"] > 60
    assert 0 < frozen["wall_s"] <= learning["wall_s"]  # each member's wall time when it finished
    alone = train(home, "run-early", "optimizer.learning_rate=1e-12", "steps=200", "eval_every=20", "patience=2",
                  "model.hidden=16", "batch_size=32")
    summary = json.loads((alone / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] == 60
    assert summary["metrics"]["test/loss"] == pytest.approx(frozen["final_test_loss"], rel=1e-5)


def test_each_member_logs_its_curves_under_its_trial_id(home):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    swept = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(0.003;0.03)", "log=tensorboard")
    for trial in (0, 1):
        events = EventAccumulator(str(swept.folder / "trials" / str(trial) / "tensorboard")).Reload()
        rows = {(split, name, step): value for step, split, name, value in curve_rows(swept.folder, trial)}
        # Every recorded curve, and the learning rate the trackers add (not a row of the metrics table).
        tags = set(events.Tags()["scalars"]) - {"train/learning_rate"}
        assert tags == {f"{split}/{name}" for split, name, _ in rows}
        for tag in tags:
            split, name = tag.split("/")
            for event in events.Scalars(tag):
                assert event.value == pytest.approx(rows[(split, name, event.step)], rel=1e-6)
        assert len(events.Scalars("train/loss")) == 40
