"""Asynchronous checkpoints: a kill while one is being written leaves the previous one loadable, and
the resumed run equals an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from tests.conftest import Result, run_subprocess

ARGS = ["train", "digits_mlp", "model.hidden=16", "steps=100", "eval_every=20", "checkpoint_every=20",
        "steps_per_call=10", "plot=false", "--no-progress", "--no-compile-cache"]


def run(tmp_path, run_dir, kill_after_save: int = 0, extra: tuple[str, ...] = ()) -> Result:
    """``pipeline train`` in a fresh process; with ``kill_after_save=N`` it SIGKILLs itself right after
    the N-th save was handed to Orbax, while that save is still being written in the background
    (tests/plugins/kill_after_save.py, loaded through the test-only ``PIPELINE_TEST_PLUGIN``)."""
    env = {"PIPELINE_STORE": str(tmp_path / "data"), "PIPELINE_RUNS": str(tmp_path / "runs")}
    if kill_after_save:
        env.update(PIPELINE_TEST_PLUGIN="tests.plugins.kill_after_save",
                   PIPELINE_TEST_KILL_AFTER_SAVE=str(kill_after_save))
    return run_subprocess([*ARGS, "--run-dir", str(run_dir), *extra], env=env, timeout=300)


def metrics(run_dir) -> dict:
    t = pq.read_table(run_dir / "metrics.parquet").sort_by([("step", "ascending"), ("split", "ascending"),
                                                              ("name", "ascending")])
    return {k: np.asarray(t.column(k)) for k in ("step", "split", "name", "value")}


def test_a_kill_during_an_async_save_resumes_exactly(tmp_path):
    whole = run(tmp_path, tmp_path / "whole")
    assert whole.code == 0, whole.err
    killed = run(tmp_path, tmp_path / "killed", kill_after_save=3)  # at step 60, its write in flight
    assert killed.code == -9, killed.err
    resumed = run(tmp_path, tmp_path / "killed", extra=("--resume",))
    assert resumed.code == 0, resumed.err
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "killed")
    for key in ("step", "split", "name"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["value"], b["value"])  # bit for bit: same batches, same updates
