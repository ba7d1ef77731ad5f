"""Run and sweep folders under concurrency, faults and hostile input: the command line's battery.

Every case runs ``pipeline ...`` (in this process, or as a user would in a new one) and checks
its exit status and that a failure is exactly one line on stderr, without a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import Config, to_dict
from pipeline.durable.folder_locks import lock_holder
from pipeline.track.metrics import MetricsTable
from tests.conftest import ROOT, Result, run_subprocess

QUIET = ["--no-progress", "--no-compile-cache"]
TINY = ["model.hidden=8", "steps=20", "eval_every=10", "checkpoint_every=10"]


def one_line(result: Result, code: int = 2) -> str:
    """The single stderr line of a command that had to fail with ``code``."""
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip("\n").splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


def fake_run(folder: Path, experiment: str = "digits_mlp", data: str = "digits",
             metrics: dict | None = None, steps: int = 10) -> Path:
    """A finished run folder written by hand (no training): config, summary, metrics parts."""
    folder.mkdir(parents=True)
    config = to_dict(Config())
    config["data"]["name"] = data
    (folder / "config.json").write_text(json.dumps({"experiment": experiment, "config": config}))
    metrics = metrics if metrics is not None else {"test/accuracy": 0.9, "test/loss": 0.3}
    (folder / "summary.json").write_text(json.dumps({"steps": steps, "wall_s": 1.5, "metrics": metrics}))
    table = MetricsTable(folder / "metrics.parquet")
    for step in range(1, steps + 1):
        table.add(step, "train", {"loss": 1.0 / step}, 0.1)
        table.flush()
    return folder


HOLDER = """
import sys, time
from pipeline.durable.folder_locks import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


class Holder:
    """Another process that holds the lock of a folder until the block ends."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self) -> Holder:
        assert self.proc.stdout.readline().strip() == "locked"
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- every number in range before any work starts ------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("steps=2000000000", "bad value for 'steps': 2000000000 must be at most 1_000_000_000"),
    ("data.shuffle_buffer=0", "bad value for 'data.shuffle_buffer': 0 must be at least 1"),
    ("data.prefetch=0", "bad value for 'data.prefetch': 0 must be at least 1"),
    ("data.max_device_bytes=-1", "bad value for 'data.max_device_bytes': -1 must not be negative"),
    ("eval_batch_size=0", "bad value for 'eval_batch_size': 0 must be at least 1"),
    ("eval_batch_size=1000000000", "bad value for 'eval_batch_size': 1000000000 must be at most"),
    ("seed=-1", "bad value for 'seed': -1 must be between 0 and 4294967295"),
    ("data_seed=99999999999", "bad value for 'data_seed': 99999999999 must be between 0 and"),
    ("steps_per_call=1000000", "bad value for 'steps_per_call': 1000000 must be at most 100_000"),
    ("epochs=-1", "bad value for 'epochs': -1 must not be negative"),
    ("optimizer.learning_rate=nan", "bad value for 'optimizer.learning_rate': 'nan' is not a finite number"),
], ids=["steps", "shuffle_buffer", "prefetch", "max_device_bytes", "eval_batch_size-0", "eval_batch_size-huge",
        "seed", "data_seed", "steps_per_call", "epochs", "learning_rate-nan"])
def test_train_numbers_out_of_range(cli, tmp_path, override, message):
    line = one_line(cli("train", "digits_mlp", override, "--runs", str(tmp_path / "runs"), *QUIET))
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "runs").exists()  # refused before anything was made


@pytest.mark.parametrize("args, message", [
    (["--population-memory", "nan"], "bad value for '--population-memory': 'nan' is not a size"),
    (["--population-memory", "inf"], "bad value for '--population-memory': 'inf' is not a size"),
    (["--population-memory=-1G"], "bad value for '--population-memory': '-1G' must be positive"),
    (["--keep", "nan"], "bad value for '--keep': nan must be between 0 and 1"),
    (["--keep", "-0.5"], "bad value for '--keep': -0.5 must be between 0 and 1"),
    (["--trials", "-3"], "bad value for '--trials': -3 must be at least 1"),
    (["--strategy", "random", "--trials", "1000000"], "bad value for '--trials': 1000000 is more than the 100000"),
    (["--search-seed", "-1"], "bad value for '--search-seed': -1 must be between 0 and"),
    (["--top", "-1"], "bad value for '--top': -1 must not be negative"),
    (["--rungs", "-5"], "bad value for '--rungs': -5 must be a positive step"),
    (["--max-population", "-1"], "bad value for '--max-population': -1 must be at least 1"),
], ids=["memory-nan", "memory-inf", "memory-negative", "keep-nan", "keep-negative", "trials-negative",
        "trials-huge", "search-seed-negative", "top-negative", "rungs-negative", "max-population-negative"])
def test_sweep_numbers_out_of_range(cli, tmp_path, args, message):
    line = one_line(cli("sweep", "digits_mlp", "seed=range(2)", *args, "--sweeps", str(tmp_path / "sweeps"),
                        *QUIET))
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("space", [
    ["seed=range(1,100000000)"],
    ["seed=range(1000)", "optimizer.learning_rate=linspace(0.001,0.01,1000)"],
    ["optimizer.learning_rate=logspace(1e-4,1e-1,1e9)"],
], ids=["range-1e8", "grid-1e6", "logspace-1e9"])
def test_huge_sweep_is_refused_before_building_trials(cli, tmp_path, space):
    started = time.monotonic()
    line = one_line(cli("sweep", "digits_mlp", *space, "--sweeps", str(tmp_path / "sweeps"), *QUIET))
    assert time.monotonic() - started < 10  # not 10^8 trials built first
    assert "100000" in line, line
    assert not (tmp_path / "sweeps").exists()


def test_usage_errors_are_one_line(cli):
    assert "invalid int value: 'nan'" in one_line(cli("sweep", "digits_mlp", "--trials", "nan"))
    assert "unrecognized arguments: --bogus" in one_line(cli("runs", "list", "--bogus"))


# -- folders: exclusive, locked ------------------------------------------------------------------
def test_resume_without_a_run_folder(cli, tmp_path):
    assert one_line(cli("train", "digits_mlp", "--resume", *QUIET)) == "error: --resume needs --run-dir of a run"


def test_run_dir_holding_something_else_is_refused(cli, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    line = one_line(cli("train", "digits_mlp", *TINY, "--run-dir", str(folder), *QUIET))
    assert line.startswith(f"error: bad value for '--run-dir': {folder} exists and is not a run folder"), line
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["thesis.tex"]


def test_a_locked_run_folder_is_refused_naming_the_holder(cli, tmp_path):
    folder = tmp_path / "run"
    with Holder(folder) as holder:
        line = one_line(cli("train", "digits_mlp", *TINY, "--run-dir", str(folder), *QUIET))
    assert line.startswith(f"error: run folder {folder} is in use by pid {holder.proc.pid} on host "), line
    assert "use another --run-dir" in line
    assert not (folder / "config.json").exists()  # nothing was touched


def test_a_locked_sweep_folder_is_refused_naming_the_holder(cli, tmp_path):
    folder = tmp_path / "sweep"
    with Holder(folder) as holder:
        line = one_line(cli("sweep", "digits_mlp", "seed=range(2)", *TINY, "--sweep-dir", str(folder), *QUIET))
    assert line.startswith(f"error: sweep folder {folder} is in use by pid {holder.proc.pid} on host "), line
    assert "use another --sweep-dir" in line


def test_an_os_error_is_one_line_naming_the_path(cli, tmp_path):
    root = tmp_path / "not-a-folder"
    root.write_text("")
    line = one_line(cli("train", "digits_mlp", *TINY, "--runs", str(root), *QUIET))
    assert line.startswith(f"error: {root}") and "Not a directory" in line, line


def test_a_planted_lock_symlink_is_not_followed(cli, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    line = one_line(cli("train", "digits_mlp", *TINY, "--run-dir", str(folder), *QUIET))
    assert line.startswith(f"error: {folder / '.lock'}"), line
    assert target.read_text() == "precious"


def start_train(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=ROOT, text=True,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_trains_into_one_run_folder(workdir):
    """Started together: one runs, the other stops at once naming the first one's pid."""
    folder = workdir / "run"
    args = ["digits_mlp", "model.hidden=16", "steps=3000", "eval_every=1000", "checkpoint_every=1000",
            "--run-dir", str(folder), *QUIET]
    procs = [start_train(args, {}) for _ in range(2)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    _, _, err = next(r for r in results if r[0].returncode == 2)
    line = one_line(Result(2, "", err))
    assert line.startswith(f"error: run folder {folder} is in use by pid {winner.pid} on host "), line
    table = pq.read_table(folder / "metrics.parquet")
    train_loss = (np.asarray(table.column("name")) == "loss") & (np.asarray(table.column("split")) == "train")
    steps = np.asarray(table.column("step"))[train_loss]
    np.testing.assert_array_equal(np.sort(steps), np.arange(1, 3001))  # every step once: the loser wrote nothing


@pytest.mark.slow
def test_two_trains_in_the_same_second_get_two_folders(workdir):
    args = ["digits_mlp", *TINY, *QUIET]
    procs = [start_train(args, {}) for _ in range(3)]
    folders = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        folders.append(out.strip().splitlines()[-1].removeprefix("run folder: "))
    assert len(set(folders)) == 3
    assert all((Path(f) / "summary.json").is_file() for f in folders)


def test_new_run_dirs_in_one_second_differ(tmp_path, monkeypatch):
    from pipeline.track import run_dir

    monkeypatch.setattr(run_dir.time, "strftime", lambda fmt: "20250101-000000")
    made = [run_dir.new_run_dir(tmp_path, "exp") for _ in range(3)]
    assert [p.name for p in made] == ["exp-20250101-000000", "exp-20250101-000000-2", "exp-20250101-000000-3"]
    assert all(p.is_dir() for p in made)


# -- signals -------------------------------------------------------------------------------------
SIGNAL_ARGS = ["digits_mlp", "model.hidden=16", "steps=3000", "eval_every=500", "checkpoint_every=50",
               "steps_per_call=10", "checkpoint_keep=2", *QUIET]


def metrics_without_wall(run_dir: Path):
    return pq.read_table(run_dir / "metrics.parquet").drop(["wall_s"]).sort_by(
        [("step", "ascending"), ("split", "ascending"), ("name", "ascending")])


def wait_for_checkpoint(proc: subprocess.Popen, checkpoints: Path, pattern: str, seconds: float) -> None:
    """Until a complete Orbax step (a folder named by its step number) matches ``checkpoints/pattern``."""
    deadline = time.time() + seconds
    while not [p for p in checkpoints.glob(pattern) if p.name.isdigit()]:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_saves_then_resume_equals_the_uninterrupted_run(workdir):
    env = {"PIPELINE_STORE": str(workdir / "data"), "PIPELINE_RUNS": str(workdir / "runs")}
    straight = run_subprocess(["train", *SIGNAL_ARGS, "--run-dir", str(workdir / "straight")], env)
    assert straight.code == 0, straight.err

    folder = workdir / "terminated"
    proc = start_train([*SIGNAL_ARGS, "--run-dir", str(folder)], env)
    wait_for_checkpoint(proc, folder / "checkpoints", "*", 120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    line = one_line(Result(proc.returncode, "", err), code=143)
    assert line.startswith("error: interrupted at step ") and f"resume with --run-dir {folder} --resume" in line
    stopped = int(line.split("step ")[1].split(";")[0])
    assert stopped < 3000 and not (folder / "summary.json").exists()
    assert stopped in [int(p.name) for p in (folder / "checkpoints").iterdir() if p.name.isdigit()]
    assert lock_holder(folder) is None  # the lock went with the process

    resumed = run_subprocess(["train", *SIGNAL_ARGS, "--run-dir", str(folder), "--resume"], env)
    assert resumed.code == 0, resumed.err
    assert metrics_without_wall(workdir / "straight").equals(metrics_without_wall(folder))


# -- damaged records: one line naming the file ---------------------------------------------------
def test_runs_list_skips_a_damaged_run_with_one_warning(cli, tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "a-good")
    bad = fake_run(runs / "b-bad")
    (bad / "summary.json").write_text("{not json")
    fake_run(runs / "c-good")
    r = cli("runs", "list", "--runs", str(runs))
    line = one_line(r, code=0)
    assert line.startswith(f"warning: skipped {bad}: {bad / 'summary.json'}: damaged record"), line
    assert "a-good" in r.out and "c-good" in r.out and "b-bad" not in r.out


@pytest.mark.parametrize("damage", ["config", "metrics-part"])
def test_runs_list_skips_other_damage(cli, tmp_path, damage):
    runs = tmp_path / "runs"
    fake_run(runs / "a-good")
    bad = fake_run(runs / "b-bad")
    if damage == "config":
        (bad / "config.json").write_text('["not", "an", "object"]')
        named = bad / "config.json"
    else:
        named = sorted((bad / "metrics.parquet").iterdir())[-1]
        named.write_bytes(named.read_bytes()[:20])
    r = cli("runs", "list", "--runs", str(runs))
    assert one_line(r, code=0).startswith(f"warning: skipped {bad}: {named}: damaged"), r.err
    assert "a-good" in r.out


def test_runs_list_places_cells_by_column_and_shows_the_dataset_name(tmp_path):
    from pipeline.track.runs import list_runs

    runs = tmp_path / "runs"
    fake_run(runs / "a-class", metrics={"test/accuracy": 0.9, "test/loss": 0.3})
    fake_run(runs / "b-regr", experiment="regression_mlp", data="regression", metrics={"test/mse": 0.25})
    rows = list_runs(runs, warn=lambda message: pytest.fail(message))
    assert [list(r) for r in rows] == [["run", "experiment", "data", "steps", "test/accuracy", "test/loss",
                                        "test/mse"]] * 2
    assert rows[0]["data"] == "digits" and rows[1]["data"] == "regression"
    assert (rows[0]["test/mse"], rows[1]["test/mse"]) == ("", 0.25)
    assert (rows[1]["test/accuracy"], rows[1]["test/loss"]) == ("", "")


@pytest.mark.parametrize("damage", ["config.json", "summary.json", "metrics part", "summary fields"])
def test_runs_show_of_a_damaged_run_names_the_file(cli, tmp_path, damage):
    run = fake_run(tmp_path / "run")
    if damage == "metrics part":
        named = sorted((run / "metrics.parquet").iterdir())[0]
        named.write_bytes(b"garbage")
    elif damage == "summary fields":
        named = run / "summary.json"
        named.write_text(json.dumps({"steps": 3}))
    else:
        named = run / damage
        named.write_bytes(b"\xff\xfe\x00garbage")
    line = one_line(cli("runs", "show", str(run)))
    assert line.startswith(f"error: {named}: damaged"), line
    if damage == "metrics part":
        assert one_line(cli("runs", "plot", str(run))).startswith(f"error: {named}: damaged Parquet")


def test_runs_show_of_a_sweep_with_damaged_trials_names_the_file(cli, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    (sweep / "trials.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    line = one_line(cli("runs", "show", str(sweep)))
    assert line.startswith(f"error: {sweep / 'trials.parquet'}: damaged Parquet"), line


def test_resume_with_damaged_records_names_the_file(cli, tmp_path):
    run = tmp_path / "run"
    first = cli("train", "digits_mlp", *TINY, "--run-dir", str(run), *QUIET)
    assert first.code == 0, first.err
    part = sorted((run / "metrics.parquet").iterdir())[-1]
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])
    line = one_line(cli("train", "digits_mlp", *TINY, "steps=30", "--run-dir", str(run), "--resume", *QUIET))
    assert line.startswith(f"error: {part}: damaged Parquet"), line
    part.write_bytes(good)
    (run / "config.json").write_text('{"config": ')
    line = one_line(cli("train", "digits_mlp", *TINY, "steps=30", "--run-dir", str(run), "--resume", *QUIET))
    assert line.startswith(f"error: {run / 'config.json'}: damaged record (not JSON"), line


@pytest.mark.contract  # `pipeline runs list | head`: a closed stdout is exit 0 and silence, in a real process
def test_runs_list_into_a_closed_pipe_is_quiet(tmp_path):
    runs = tmp_path / "runs"
    for i in range(30):
        fake_run(runs / f"run-{i:02d}")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "runs", "list", "--runs", str(runs)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 0 and err == "", err


def test_symlinks_planted_at_temporary_names_are_not_followed(cli, tmp_path):
    """Links where the files used to be staged (``NAME.tmp``) and at guessable hidden names: targets untouched."""
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = tmp_path / "run"
    first = cli("train", "digits_mlp", *TINY, "--run-dir", str(run), *QUIET)
    assert first.code == 0, first.err
    planted = ["config.json.tmp", "dataset.json.tmp", "summary.json.tmp", "metrics.parquet.tmp",
               f".summary.json.{os.getpid()}.tmp", ".lock.tmp"]
    for name in planted:
        (run / name).symlink_to(target)
    inside = run / "metrics.parquet" / f".part-000000009-0.parquet.{os.getpid()}.tmp"  # a killed flush's name
    inside.symlink_to(target)
    again = cli("train", "digits_mlp", *TINY, "steps=40", "--run-dir", str(run), *QUIET)
    assert again.code == 0 and "Traceback" not in again.err, again.err
    assert target.read_text() == "precious"
    assert all((run / name).is_symlink() for name in planted)
    assert not os.path.lexists(inside)  # a leftover of the metrics folder: the link removed, never followed
    assert json.loads((run / "summary.json").read_text())["steps"] == 40
    table = pq.read_table(run / "metrics.parquet")
    train_loss = (np.asarray(table.column("split")) == "train") & (np.asarray(table.column("name")) == "loss")
    np.testing.assert_array_equal(np.sort(np.asarray(table.column("step"))[train_loss]), np.arange(1, 41))


@pytest.mark.slow
def test_sigterm_checkpoints_a_sweep(workdir):
    folder = workdir / "sweep"
    args = ["digits_mlp", "model.hidden=16", "optimizer.learning_rate=choice(1e-3;1e-2)", "steps=4000",
            "eval_every=20", "checkpoint_every=20", "batch_size=32", "--vmap", "--sweep-dir", str(folder), *QUIET]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_checkpoint(proc, folder / "checkpoints", "g*-c*/*", 180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    line = one_line(Result(proc.returncode, "", err), code=143)
    assert line.startswith("error: interrupted at step ") and f"--sweep-dir {folder}" in line, line
    assert lock_holder(folder) is None
    statuses = {r["status"] for r in pq.read_table(folder / "trials.parquet").to_pylist()}
    assert statuses <= {"running", "pending"}
