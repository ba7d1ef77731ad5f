"""``pipeline sweep --executor ray``: populations as Ray tasks on a local Ray cluster record what the
local executor records. Skipped where Ray (the ``ray`` extra) is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.data import Store, ensure_dataset
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")]

SWEEP = ["digits_mlp", "optimizer.learning_rate=choice(0.001;0.003)", "steps=40", "eval_every=20",
         "model.hidden=32", "plot=false", "--max-population", "1", "--vmap", "--no-progress", "--json"]


def sweep(store: Store, folder, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "XLA_FLAGS", "JAX_COORD"))}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "sweep", *SWEEP, "--store", str(store.root),
                           "--sweep-dir", str(folder), *extra], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "JAX_PLATFORMS": "cpu"}, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_populations_as_ray_tasks_record_what_the_local_executor_records(tmp_path):
    pandas = pytest.importorskip("pandas")  # the dev extra's
    store = Store(tmp_path / "data")
    ensure_dataset(store, "digits")
    local = sweep(store, tmp_path / "local")
    ray = sweep(store, tmp_path / "ray", "--executor", "ray")
    assert ray["populations"] == local["populations"] == 2 and ray["finished"] == 2
    # trials.parquet: every column (trial, group, status, steps, the swept values, final and best
    # metrics, best step, overrides) but the wall time, exactly.
    trials = [pq.read_table(tmp_path / f / "trials.parquet").drop_columns(["wall_s"]).to_pandas()
              for f in ("local", "ray")]
    assert {"trial", "status", "optimizer.learning_rate", "final_test_loss", "best_step"} <= set(trials[0].columns)
    assert len(trials[0]) == 2 and (trials[0]["status"] == "done").all()
    pandas.testing.assert_frame_equal(trials[1], trials[0], check_exact=True)
    # curves.parquet: the same rows (trial, step, split, name, value), exactly.
    order = [("trial", "ascending"), ("split", "ascending"), ("name", "ascending"), ("step", "ascending")]
    curves = [pq.read_table(tmp_path / f / "curves.parquet").sort_by(order).to_pandas() for f in ("local", "ray")]
    assert len(curves[0]) > 0 and list(curves[0].columns) == ["trial", "step", "split", "name", "value"]
    pandas.testing.assert_frame_equal(curves[1], curves[0], check_exact=True)
    # The driver merged every population's metrics and removed the populations' own folders.
    assert not list((tmp_path / "ray" / "checkpoints").glob("*.metrics"))
    assert json.loads((tmp_path / "ray" / "sweep.json").read_text())["plans"]["0"]["plan"] == "population"
