"""`pipeline train` end to end as a user meets it: import, train with overrides, --json, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import Store, import_dataset
from tests.conftest import run_subprocess, wait_for

SUMMARY_KEYS = {"run_dir", "experiment", "steps", "wall_s", "metrics"}
QUIET = ["--no-progress", "--no-compile-cache"]  # in-process runs leave JAX's global config alone


def write_blobs(path: Path) -> Path:
    """Four well separated Gaussian classes in 10 dimensions: an MLP should get them all right."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 10)) * 4
    y = rng.integers(0, 4, size=240).astype(np.int64)
    x = (centers[y] + rng.normal(size=(240, 10))).astype(np.float32)
    np.savez(path, x=x, y=y)
    return path


def write_regression(path: Path) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 4)).astype(np.float32)
    np.savez(path, x=x, y=(x @ np.arange(1.0, 5.0)).astype(np.float32))
    return path


def last_line_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.contract  # --json: the summary is the last stdout line of a real process, progress bar on
def test_import_train_json_end_to_end(cli, workdir):
    source = write_blobs(workdir / "x.npz")
    r = cli("data", "import", str(source), "--name", "n")
    assert r.code == 0, r.err
    assert r.out.startswith("imported 'n': classification, features [10], train 192, test 48 rows")

    args = ["train", "digits_mlp", "data=n", "model.hidden=100", "steps=200", "--json"]
    r = cli(*args, *QUIET)
    assert r.code == 0, r.err
    summary = last_line_json(r.out)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["experiment"] == "digits_mlp" and summary["steps"] == 200
    assert {"test/accuracy", "test/loss"} <= set(summary["metrics"])
    assert summary["metrics"]["test/accuracy"] >= 0.95  # separable classes

    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == workdir / "runs"
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert wait_for(run_dir / "curves.png").stat().st_size > 0  # drawn by a background process
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["experiment"] == "digits_mlp"
    assert (saved["config"]["data"]["name"], saved["config"]["model"]["hidden"], saved["config"]["steps"]) == (
        "n", [100], 200)
    table = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    final = {f"{row['split']}/{row['name']}": row["value"] for row in table
             if row["split"] in ("test", "val") and row["step"] == 200}
    assert final == summary["metrics"]
    assert sorted(row["step"] for row in table if row["split"] == "train" and row["name"] == "loss") == list(
        range(1, 201))

    # The same command in a fresh process, as a user types it (progress bar and compile cache on):
    # the summary is the last stdout line and the numbers equal the in-process run's.
    proc = run_subprocess([*args, "--runs", str(workdir / "runs2")],
                          env={"PIPELINE_COMPILE_CACHE": str(workdir / "jax-cache")})
    assert proc.code == 0, proc.err
    assert "Traceback" not in proc.err
    again = last_line_json(proc.out)
    assert json.loads((Path(again["run_dir"]) / "summary.json").read_text()) == again
    assert again["metrics"] == summary["metrics"]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-store")
    store = Store(root / "data")
    import_dataset(store, str(write_blobs(root / "x.npz")), "n")
    import_dataset(store, str(write_regression(root / "r.npz")), "reg")
    return root


def fails(cli, store_root: Path, runs: Path, *args: str) -> str:
    """Run a train command that must fail cleanly; return its one error line."""
    r = cli("train", *args, "--store", str(store_root / "data"), "--runs", str(runs), *QUIET)
    assert r.code == 2, (r.out, r.err)
    assert r.out == "" and "Traceback" not in r.err
    assert r.err.startswith("error: ") and r.err.endswith("\n") and r.err.count("\n") == 1, r.err
    assert Store(store_root / "data").names() == ["n", "reg"]  # the store is untouched
    return r.err.removeprefix("error: ").rstrip("\n")


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "unknown experiment 'nosuch' (experiments: "),
    (["nosuch/exp.py"], "experiment file nosuch/exp.py does not exist"),
    (["digits_mlp", "optimizer.learning_rat=0.1"],
     "unknown config key 'optimizer.learning_rat'; did you mean optimizer.learning_rate"),
    (["digits_mlp", "model.hiden=100"], "unknown config key 'model.hiden'; did you mean model.hidden"),
    (["digits_mlp", "steps=ten"], "bad value for 'steps': 'ten' is not an integer"),
    (["digits_mlp", "model.hidden=100,x"],
     "bad value for 'model.hidden': '100,x' is not a comma-separated list of integers"),
    (["digits_mlp", "optimizer.learning_rate=nan"],
     "bad value for 'optimizer.learning_rate': 'nan' is not a finite number"),
    (["digits_mlp", "optimizer.name=nadamx"], "bad value for 'optimizer.name': 'nadamx'; choose one of adafactor, "),
    (["digits_mlp", "steps"], "override 'steps' is not KEY=VALUE"),
    (["digits_mlp", "data=nope"], "no dataset 'nope' in the store "),
    (["digits_mlp", "data=n", "batch_size=500"], "bad value for 'batch_size': 500 is more than the 173 training rows"),
], ids=["unknown-experiment", "missing-experiment-file", "unknown-key", "unknown-nested-key", "bad-int",
        "bad-list", "non-finite-float", "bad-choice", "not-key-value", "missing-dataset", "batch-too-big"])
def test_bad_input_is_one_line_and_exit_2(cli, store_root, tmp_path, args, message):
    error = fails(cli, store_root, tmp_path / "runs", *args)
    assert error.startswith(message), error
    assert not (tmp_path / "runs").exists()  # nothing was started
    if args == ["nosuch"]:
        assert "digits_mlp" in error and "regression_mlp" in error
    if "data=nope" in args:
        assert error.endswith("(datasets: n, reg)")


def test_non_finite_loss_names_the_step(cli, store_root, tmp_path):
    run_dir = tmp_path / "run"
    error = fails(cli, store_root, tmp_path / "runs", "regression_mlp", "data=reg", "optimizer.name=sgd",
                  "optimizer.learning_rate=1e30", "steps=20", "eval_every=10", "--run-dir", str(run_dir),
                  "data.validation_fraction=0")  # a batch of 64 needs all 64 training rows
    assert error == (f"non-finite training loss at step 2; the run stopped "
                     f"(metrics up to step 1 are in {run_dir / 'metrics.parquet'})")
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert rows and {row["step"] for row in rows} == {1} and all(np.isfinite(row["value"]) for row in rows)


@pytest.mark.parametrize("source, message", [
    ("def config(:\n", "SyntaxError: "),
    ("raise ImportError('no module named torch')\n", "ImportError: no module named torch"),
    ("x = 1\n", "has no config() function"),
    ("def config():\n    return {'steps': 1}\n", "config() returned dict, not a pipeline.config.Config"),
    ("from pipeline.config import Config\ndef config():\n    return Config(step=1)\n",
     "config() failed: TypeError: "),
], ids=["syntax-error", "import-error", "no-config", "not-a-config", "config-raises"])
def test_broken_experiment_file_is_one_line(cli, store_root, tmp_path, source, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    error = fails(cli, store_root, tmp_path / "runs", str(path))
    assert error.startswith(f"experiment {path}") and message in error, error
