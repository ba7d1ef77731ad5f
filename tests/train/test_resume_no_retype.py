"""``pipeline train --run-dir DIR --resume``: the run's own config, no retyping; only extending overrides;
a finished run says so and changes nothing; extending a finished run trains on from its final checkpoint."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.train.test_resume import final_params, metrics_without_wall

# Checkpoints every 20 steps, K fixed: a run stopped at a checkpoint resumes on the same call boundaries.
ARGS = ["model.hidden=8", "steps=60", "eval_every=20", "checkpoint_every=20", "steps_per_call=10", "plot=false",
        "--no-progress"]


def stoppable_experiment(folder: Path) -> Path:
    """``digits_mlp`` with a hook that fails once its run has the train metrics of step ``$STOP_AT``: the
    loop then saves a checkpoint and stops, as after Ctrl-C. Without the variable it does nothing."""
    path = folder / "stoppable.py"
    path.write_text(textwrap.dedent("""
        import os

        from pipeline.experiments import load_module
        from pipeline.hooks import Hook

        config = load_module("digits_mlp").config


        class StopAt(Hook):
            def after_call(self, steps, metrics):
                if os.environ.get("STOP_AT") and int(steps[-1]) >= int(os.environ["STOP_AT"]):
                    raise RuntimeError("stopped by the test")


        def hooks():
            return [StopAt()]
    """))
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def train_losses(run_dir: Path) -> np.ndarray:
    table = pq.read_table(run_dir / "metrics.parquet")
    mine = (np.asarray(table.column("split")) == "train") & (np.asarray(table.column("name")) == "loss")
    return np.asarray(table.column("step"))[mine]


def one_line(result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and "Traceback" not in result.err, (result.code, result.err)
    return lines[0]


def test_resume_without_retyping_equals_an_uninterrupted_run(cli, workdir, monkeypatch):
    experiment = str(stoppable_experiment(workdir))
    straight = cli("train", experiment, *ARGS, "--run-dir", str(workdir / "straight"))
    assert straight.code == 0, straight.err
    run_dir = workdir / "stopped"
    monkeypatch.setenv("STOP_AT", "30")
    stopped = cli("train", experiment, *ARGS, "--run-dir", str(run_dir))
    assert stopped.code != 0 and "stopped by the test" in stopped.err
    assert not (run_dir / "summary.json").exists()
    monkeypatch.delenv("STOP_AT")

    resumed = cli("train", "--run-dir", str(run_dir), "--resume", "--no-progress")  # nothing retyped
    assert resumed.code == 0, resumed.err
    notes = [line for line in resumed.err.splitlines() if line.startswith("resumed from step ")]
    assert len(notes) == 1 and notes[0].endswith(" of 60"), resumed.err
    assert 30 <= int(notes[0].split()[3]) < 60
    assert metrics_without_wall(workdir / "straight").equals(metrics_without_wall(run_dir))
    np.testing.assert_array_equal(train_losses(run_dir), np.arange(1, 61))  # every step exactly once
    a, b = final_params(workdir / "straight"), final_params(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert json.loads((run_dir / "config.json").read_text())["experiment_file"] == experiment


def test_extending_a_finished_run_continues_from_its_final_checkpoint(cli, workdir):
    """A constant schedule: 40 steps extended to 60 equal 60 steps straight, bitwise."""
    args = [a for a in ARGS if not a.startswith("steps=")]
    straight = cli("train", "digits_mlp", *args, "steps=60", "--run-dir", str(workdir / "straight"))
    assert straight.code == 0, straight.err
    run_dir = workdir / "extended"
    assert cli("train", "digits_mlp", *args, "steps=40", "--run-dir", str(run_dir)).code == 0

    extended = cli("train", "--run-dir", str(run_dir), "--resume", "steps=60", "--no-progress", "--json")
    assert extended.code == 0, extended.err
    assert "resumed from step 40 of 60" in extended.err
    assert json.loads(extended.out.strip().splitlines()[-1])["steps"] == 60
    assert metrics_without_wall(workdir / "straight").equals(metrics_without_wall(run_dir))
    a, b = final_params(workdir / "straight"), final_params(run_dir)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert json.loads((run_dir / "config.json").read_text())["config"]["steps"] == 60


def test_an_exported_sweep_trial_resumes_with_more_steps(cli, workdir):
    swept = cli("sweep", "digits_mlp", "model.hidden=8", "steps=40", "eval_every=20", "batch_size=32",
                "optimizer.learning_rate=choice(0.01)", "--no-vmap", "--no-progress", "--json")
    assert swept.code == 0, swept.err
    sweep_dir = json.loads(swept.out.strip().splitlines()[-1])["sweep_dir"]
    run_dir = workdir / "trial0"
    assert cli("sweep", "export", sweep_dir, "--trial", "0", "--run-dir", str(run_dir)).code == 0
    before = metrics_without_wall(run_dir)

    # The trial's config (learning rate, batch size, hidden units) comes from its record: only steps is typed.
    resumed = cli("train", "--run-dir", str(run_dir), "--resume", "steps=60", "--no-progress", "--json")
    assert resumed.code == 0, resumed.err
    assert "resumed from step 40 of 60" in resumed.err
    summary = json.loads(resumed.out.strip().splitlines()[-1])
    assert summary["steps"] == 60 and summary["experiment"] == "digits_mlp"
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert (saved["steps"], saved["batch_size"], saved["optimizer"]["learning_rate"]) == (60, 32, 0.01)
    np.testing.assert_array_equal(train_losses(run_dir), np.arange(1, 61))
    after = metrics_without_wall(run_dir)
    assert after.filter(np.asarray(after.column("step")) <= 40).equals(before)  # the trial's rows kept as they were


def test_a_change_a_resume_cannot_make_is_one_line_and_changes_nothing(cli, workdir):
    run_dir = workdir / "run"
    assert cli("train", "digits_mlp", *ARGS, "steps=40", "--run-dir", str(run_dir)).code == 0
    before = snapshot(run_dir)
    line = one_line(cli("train", "--run-dir", str(run_dir), "--resume", "steps=80", "optimizer.learning_rate=0.5"))
    assert "a resume cannot change optimizer.learning_rate (0.001 -> 0.5)" in line and "steps" in line
    line = one_line(cli("train", "digits_cnn", "--run-dir", str(run_dir), "--resume"))
    assert "is a run of experiment 'digits_mlp', not 'digits_cnn'" in line
    assert snapshot(run_dir) == before
    # Retyping the recorded values is no change: the run is finished, and says so.
    again = cli("train", "digits_mlp", "model.hidden=8", "steps=40", "--run-dir", str(run_dir), "--resume")
    assert again.code == 0 and "is finished" in again.out, again.err


def test_a_finished_run_says_so_and_how_to_extend_it_and_changes_nothing(cli, workdir):
    run_dir = workdir / "run"
    assert cli("train", "digits_mlp", *ARGS, "steps=40", "--run-dir", str(run_dir)).code == 0
    before = snapshot(run_dir)
    r = cli("train", "--run-dir", str(run_dir), "--resume", "--no-progress")
    assert r.code == 0, r.err
    assert r.out.strip() == (f"run {run_dir} is finished: it trained all 40 steps. To train on from its final "
                             f"checkpoint: pipeline train --run-dir {run_dir} --resume steps=NEW_TOTAL (more than 40)")
    assert snapshot(run_dir) == before


def test_an_early_stopped_run_says_why_and_trains_on_with_more_patience(cli, workdir):
    """A learning rate too small to move the validation accuracy: patience 1 stops at the second evaluation."""
    run_dir = workdir / "run"
    first = cli("train", "digits_mlp", *ARGS, "steps=100", "patience=1", "optimizer.learning_rate=1e-9",
                "--run-dir", str(run_dir), "--json")
    assert first.code == 0, first.err
    assert json.loads(first.out.strip().splitlines()[-1])["stopped_early"]
    before = snapshot(run_dir)
    r = cli("train", "--run-dir", str(run_dir), "--resume", "--no-progress")
    assert r.code == 0, r.err
    assert (f"run {run_dir} is finished: it stopped early at step 40 (1 evaluations without improvement, "
            "patience 1, best at step 20)") in r.out
    assert "--resume patience=N (more than 1, or 0 for no early stopping)" in r.out
    assert snapshot(run_dir) == before

    on = cli("train", "--run-dir", str(run_dir), "--resume", "patience=0", "--no-progress", "--json")
    assert on.code == 0, on.err
    assert "resumed from step 40 of 100" in on.err
    summary = json.loads(on.out.strip().splitlines()[-1])
    assert summary["steps"] == 100 and not summary["stopped_early"]
    np.testing.assert_array_equal(train_losses(run_dir), np.arange(1, 101))


def test_a_resume_cannot_end_before_where_the_run_stands(cli, workdir, monkeypatch):
    experiment = str(stoppable_experiment(workdir))
    run_dir = workdir / "stopped"
    monkeypatch.setenv("STOP_AT", "30")
    assert cli("train", experiment, *ARGS, "--run-dir", str(run_dir)).code != 0
    monkeypatch.delenv("STOP_AT")
    before = snapshot(run_dir)
    line = one_line(cli("train", "--run-dir", str(run_dir), "--resume", "steps=20"))  # it stands at 40
    assert "bad value for 'steps': 20 steps end before step" in line and "can only extend a run" in line
    assert snapshot(run_dir) == before
