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
    store = Store(tmp_path / "data")
    ensure_dataset(store, "digits")
    local = sweep(store, tmp_path / "local")
    ray = sweep(store, tmp_path / "ray", "--executor", "ray")
    assert ray["populations"] == local["populations"] == 2 and ray["finished"] == 2
    columns = ["trial", "status", "steps", "final_test_loss", "final_test_accuracy", "best_step"]
    assert (pq.read_table(tmp_path / "ray" / "trials.parquet").select(columns).to_pylist()
            == pq.read_table(tmp_path / "local" / "trials.parquet").select(columns).to_pylist())
    curves = [pq.read_table(tmp_path / f / "curves.parquet").sort_by([("trial", "ascending"), ("step", "ascending"),
                                                                       ("split", "ascending"), ("name", "ascending")])
              for f in ("local", "ray")]
    assert curves[0].num_rows == curves[1].num_rows > 0
    assert curves[0].column("value").to_pylist() == curves[1].column("value").to_pylist()
    # The driver merged every population's metrics and removed the populations' own folders.
    assert not list((tmp_path / "ray" / "checkpoints").glob("*.metrics"))
    assert json.loads((tmp_path / "ray" / "sweep.json").read_text())["plans"]["0"]["plan"] == "population"
