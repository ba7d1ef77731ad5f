"""A run killed with SIGKILL (or stopped with Ctrl-C) and resumed equals an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_subprocess

# 22 steps per epoch (1438 digits rows / 64): checkpoints every 50 steps land mid-epoch.
ARGS = ["digits_mlp", "model.hidden=16", "steps=3000", "eval_every=500", "checkpoint_every=50",
        "steps_per_call=10", "checkpoint_keep=2", "--no-progress", "--no-compile-cache"]


def final_params(run_dir: Path) -> dict[str, np.ndarray]:
    """The parameters of the newest checkpoint, read with Orbax as a plain pytree."""
    import orbax.checkpoint as ocp

    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    restored = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(steps[-1]) / "state").resolve())
    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(node)

    walk("", restored["params"])
    return flat


def metrics_without_wall(run_dir: Path):
    return pq.read_table(run_dir / "metrics.parquet").drop(["wall_s"]).sort_by([("step", "ascending"),
                                                                                 ("split", "ascending"),
                                                                                 ("name", "ascending")])


def start(run_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *ARGS, "--run-dir", str(run_dir)],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = run_dir / "checkpoints"
        steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
        if steps and max(steps) >= at_least:
            return
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("resume")
    env = {"PIPELINE_STORE": str(base / "data"), "PIPELINE_RUNS": str(base / "runs")}
    result = run_subprocess(["train", *ARGS, "--run-dir", str(base / "straight")], env)
    assert result.code == 0, result.err
    return base, env


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(reference):
    base, env = reference
    run_dir = base / "killed"
    proc = start(run_dir, env)
    wait_for_checkpoint(run_dir, proc, at_least=150)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"

    resumed = run_subprocess(["train", *ARGS, "--run-dir", str(run_dir), "--resume"], env)
    assert resumed.code == 0, resumed.err

    straight = base / "straight"
    a, b = metrics_without_wall(straight), metrics_without_wall(run_dir)
    assert a.equals(b)
    train_loss = (np.asarray(b.column("name")) == "loss") & (np.asarray(b.column("split")) == "train")
    steps = np.asarray(b.column("step"))[train_loss]
    np.testing.assert_array_equal(steps, np.arange(1, 3001))  # no step missing or repeated
    pa, pb = final_params(straight), final_params(run_dir)
    assert pa.keys() == pb.keys()
    for key in pa:
        np.testing.assert_array_equal(pa[key], pb[key])  # bitwise on CPU


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resumes(reference):
    base, env = reference
    run_dir = base / "interrupted"
    proc = start(run_dir, env)
    wait_for_checkpoint(run_dir, proc, at_least=50)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    message = err.decode().strip().splitlines()[-1]
    assert message.startswith("error: interrupted at step ") and "--resume" in message
    stopped_at = int(message.split("step ")[1].split(";")[0])
    saved = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert stopped_at in saved

    resumed = run_subprocess(["train", *ARGS, "--run-dir", str(run_dir)], env)  # a plain re-run resumes too
    assert resumed.code == 0, resumed.err
    assert metrics_without_wall(base / "straight").equals(metrics_without_wall(run_dir))


def test_resume_with_a_different_shape_is_refused(cli, tmp_path):
    run_dir = tmp_path / "run"
    first = cli("train", "digits_mlp", "model.hidden=8", "steps=20", "eval_every=20", "--run-dir", str(run_dir),
                "--no-progress", "--no-compile-cache")
    assert first.code == 0, first.err
    before = {p.name: p.read_bytes() for p in (run_dir / "metrics.parquet").iterdir()}  # a folder of parts
    second = cli("train", "digits_mlp", "model.hidden=12", "batch_size=32", "steps=20", "--run-dir", str(run_dir),
                 "--resume", "--no-progress", "--no-compile-cache")
    assert second.code == 2
    line = second.err.strip()
    assert "\n" not in line and "different config" in line
    assert "model.hidden" in line and "batch_size" in line
    assert {p.name: p.read_bytes() for p in (run_dir / "metrics.parquet").iterdir()} == before  # nothing damaged


def test_corrupt_latest_checkpoint_falls_back_to_previous(cli, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "digits_mlp", "model.hidden=8", "steps=40", "eval_every=20", "checkpoint_every=20",
            "--run-dir", str(run_dir), "--no-progress", "--no-compile-cache"]
    assert cli(*args).code == 0
    straight = metrics_without_wall(run_dir)
    # Damage every file of the newest checkpoint's state.
    for f in (run_dir / "checkpoints" / "40" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    again = cli(*args)
    assert again.code == 0, again.err
    assert "checkpoint at step 40 is unreadable" in again.err
    assert metrics_without_wall(run_dir).equals(straight)  # redone from step 20, same numbers


def test_resume_flag_needs_a_run_folder(cli, tmp_path):
    result = cli("train", "digits_mlp", "--run-dir", str(tmp_path / "nope"), "--resume", "--no-progress")
    assert result.code == 2
    assert "is not a run folder" in result.err


def test_a_first_build_checkpoint_is_refused_in_one_line_and_kept(cli, tmp_path):
    """The first build's train state had ``key`` and ``data_key`` fields and no format in its meta."""
    import orbax.checkpoint as ocp

    run_dir = tmp_path / "run"
    args = ["train", "digits_mlp", "model.hidden=8", "steps=40", "eval_every=20", "checkpoint_every=20",
            "--run-dir", str(run_dir), "--no-progress", "--no-compile-cache"]
    assert cli(*args).code == 0
    checkpoints = (run_dir / "checkpoints").resolve()
    state = ocp.StandardCheckpointer().restore(checkpoints / "40" / "state")
    shutil.rmtree(checkpoints)
    old_state = {**{k: v for k, v in state.items() if k != "ema"}, "key": np.zeros(2, np.uint32),
                 "data_key": np.zeros(2, np.uint32)}
    manager = ocp.CheckpointManager(checkpoints, item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(20, args=ocp.args.Composite(state=ocp.args.StandardSave(old_state), meta=ocp.args.JsonSave(
        {"step": 20, "best_value": 0.5, "best_step": 20, "evals_since_best": 0, "stopped_early": False,
         "wall_s": 1.0, "last_eval": {}})))
    manager.wait_until_finished()
    manager.close()
    before = sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*"))
    again = cli(*args[:-2], "--resume", "--no-progress")
    assert again.code != 0
    line = again.err.strip()
    assert "\n" not in line and "first build" in line and "cannot be resumed" in line, line
    assert sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*")) == before  # nothing deleted
