"""Training across processes and meshes: 2 processes train like 1 into one run folder, each record
written once by process 0; FSDP on a 2 x 4 mesh trains like one device (its step all-gathers the
sharded parameters); a checkpoint saved on one mesh resumes on another; a 2-process run stopped by
SIGTERM resumes like the uninterrupted run; each process reads its own rows, and the streamed
split's rows once an epoch; a sweep is one process (or Ray tasks).

Every run is a subprocess with a timeout: a hang across processes fails the test instead of the suite.
The 60-step run on one device (``one``) is the reference the others are compared with."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import Store, ensure_dataset
from tests.conftest import ROOT

NAMES = ("PIPELINE_DISTRIBUTED", "PIPELINE_COORDINATOR", "PIPELINE_NUM_PROCESSES", "PIPELINE_PROCESS_ID",
         "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS")
EIGHT = "--xla_force_host_platform_device_count=8"
FOUR = "--xla_force_host_platform_device_count=4"
# A small run: 60 steps in calls of 10, evaluated (and checkpointed) every 20.
RUN = ["digits_mlp", "steps=60", "eval_every=20", "steps_per_call=10", "checkpoint_every=20", "batch_size=32",
       "model.hidden=64", "plot=false"]
TIMEOUT_S = 240


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    return {**base, "JAX_PLATFORMS": "cpu", "PIPELINE_DISTRIBUTED_TIMEOUT": "60", **extra}


def pipeline(*args: str, launch: int = 0, program: tuple[str, ...] = ("pipeline",), **extra: str
             ) -> subprocess.CompletedProcess:
    """``pipeline ARGS`` in a subprocess; with ``launch``, N processes of ``PROGRAM ARGS`` under ``pipeline launch``."""
    prefix = ["launch", "-n", str(launch), *program] if launch else []
    proc = subprocess.run([sys.executable, "-m", "pipeline", *prefix, *args], capture_output=True, text=True,
                          env=env(**extra), cwd=ROOT, timeout=TIMEOUT_S)
    return proc


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


def train(store: Store, *args: str, launch: int = 0, experiment: str = "digits_mlp",
          program: tuple[str, ...] = ("pipeline",), **extra: str) -> dict:
    proc = pipeline("train", experiment, *RUN[1:], *args, "--store", str(store.root), "--no-progress",
                    "--no-compile-cache", "--json", launch=launch, program=program, **extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.lstrip("[0] ").startswith("{")][-1]
    return json.loads(last.split("] ", 1)[1] if last.startswith("[") else last)


def metrics(run_dir: str | Path) -> dict[tuple[int, str, str], float]:
    """``metrics.parquet`` by (step, split, name); a key recorded twice fails here."""
    table = pq.read_table(Path(run_dir) / "metrics.parquet").to_pylist()
    keys = Counter((r["step"], r["split"], r["name"]) for r in table)
    assert max(keys.values()) == 1, f"rows recorded more than once: {[k for k, n in keys.items() if n > 1][:5]}"
    return {(r["step"], r["split"], r["name"]): r["value"] for r in table}


def assert_same(got: dict, want: dict, steps: range, tol: float = 1e-6) -> None:
    keys = [k for k in want if k[0] in steps]
    assert keys and set(keys) == {k for k in got if k[0] in steps}
    worst = max(abs(got[k] - want[k]) for k in keys)
    assert worst < tol, f"largest difference {worst:.3g}"


def assert_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """The same keys (every step, split and metric), the values within ``rtol`` of each other's."""
    assert want and set(got) == set(want), sorted(set(got) ^ set(want))[:5]
    worst = max(abs(got[k] - want[k]) / max(abs(want[k]), 1e-30) for k in want)
    assert worst <= rtol, f"largest relative difference {worst:.3g}"


def assert_same_summary(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """Two runs' summaries agree: steps, final metrics, the best checkpoint (all but where and how long)."""
    assert (got["steps"], got["data"], got["stopped_early"]) == (want["steps"], want["data"], want["stopped_early"])
    assert got["metrics"] == pytest.approx(want["metrics"], rel=rtol)
    assert {k: v for k, v in got["best"].items() if k != "value"} == {k: v for k, v in want["best"].items()
                                                                      if k != "value"}
    assert got["best"]["value"] == pytest.approx(want["best"]["value"], rel=rtol)


@pytest.fixture(scope="module")
def one(store, tmp_path_factory) -> dict:
    """The reference: the 60-step run in one process on one device."""
    return train(store, "--runs", str(tmp_path_factory.mktemp("one")))


@pytest.fixture(scope="module")
def eight(store, tmp_path_factory) -> dict:
    """The same run in one process on 8 forced host devices, the state sharded 4 ways (mesh data 2 x fsdp 4)."""
    return train(store, "mesh.fsdp=4", "--runs", str(tmp_path_factory.mktemp("eight")), XLA_FLAGS=EIGHT)


@pytest.mark.slow
def test_two_processes_train_like_one_into_one_run_folder_and_resume_on_an_fsdp_mesh(store, one, tmp_path):
    two = train(store, "steps=40", "--runs", str(tmp_path / "two"), launch=2)
    # Process 0 chose the folder and wrote it; process 1 trained into the same one and wrote nothing else.
    folders = list((tmp_path / "two").iterdir())
    assert [f.name for f in folders] == [Path(two["run_dir"]).name]
    assert {"config.json", "metrics.parquet", "summary.json", "checkpoints"} <= {p.name for p in folders[0].iterdir()}
    assert json.loads((folders[0] / "summary.json").read_text())["steps"] == 40
    # The same global batches, the gradients summed over the processes: the same run (float32 sums
    # in another order).
    reference = metrics(one["run_dir"])
    assert_same(metrics(two["run_dir"]), reference, range(1, 41))
    # Saved by 2 processes on a 2 x 1 mesh; resumed by one process on a 2 x 4 mesh with the
    # parameters, Adam moments sharded 4 ways: it continues as the uninterrupted run did.
    resumed = train(store, f"--run-dir={two['run_dir']}", "mesh.fsdp=4", XLA_FLAGS=EIGHT)
    assert resumed["steps"] == 60
    assert_same(metrics(two["run_dir"]), reference, range(1, 61))
    assert resumed["metrics"]["test/loss"] == pytest.approx(one["metrics"]["test/loss"], abs=1e-6)


def fsdp_run(store: Store, fsdp: int, devices: str = "") -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.fsdp_train", str(store.root), str(fsdp)],
                          capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT_S,
                          env=env(**({"XLA_FLAGS": devices} if devices else {})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fsdp_on_a_2x4_mesh_trains_the_train_state_like_one_device(store):
    one, sharded = fsdp_run(store, 1), fsdp_run(store, 4, EIGHT)
    assert one["mesh"] == {"data": 1, "fsdp": 1} and sharded["mesh"] == {"data": 2, "fsdp": 4}
    # The 64 x 64 kernel (4096 elements) is split 4 ways on its first dimension; so are its Adam
    # moments and its moving average. The step counter stays whole.
    split = [["fsdp"], [16, 64]]
    assert sharded["params"] == split and sharded["ema"] == split
    assert sharded["adam"] == [split, split]
    assert one["params"] == [[], [64, 64]] and sharded["replicated_step"] == []
    assert sharded["placement"]["sharded_arrays"] == 4  # the kernel, its two moments and its average
    # Compiled once with explicit in and out shardings, and the same training as on one device.
    assert sharded["compiles"] == 1 and one["compiles"] == 1
    # The compiled step gathers the sharded kernel (and sums the gradients over the mesh); on one
    # device there is nothing to gather or sum.
    assert "all-gather" in sharded["collectives"] and one["collectives"] == []
    np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=0, atol=1e-6)
    assert sharded["test_loss_sum"] == pytest.approx(one["test_loss_sum"], rel=1e-6)


@pytest.mark.slow
def test_pipeline_train_on_8_devices_with_fsdp_4_records_what_one_device_records(one, eight):
    """``pipeline train`` on 8 forced host devices, ``mesh.fsdp=4`` (data 2 x fsdp 4): the whole
    metrics.parquet (every step's train loss and accuracy, every evaluation) and the summary are the
    1-device run's within 1e-5 relative. That the state is sharded and the step all-gathers is
    test_fsdp_on_a_2x4_mesh_trains_the_train_state_like_one_device's."""
    assert eight["steps"] == one["steps"] == 60
    assert_close(metrics(eight["run_dir"]), metrics(one["run_dir"]))
    assert_same_summary(eight, one)


def writes(log_dir: Path, process: int) -> list[tuple[str, str]]:
    """What one process wrote under the runs root (tests/distributed/record_writes.py): (event, path)."""
    path = log_dir / f"writes-{process}.txt"
    return [tuple(line.split("\t", 1)) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_two_processes_of_4_devices_train_like_one_process_of_8_and_write_each_record_once(store, eight, tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "writes"
    log.mkdir()
    recorder = (sys.executable, "-m", "tests.distributed.record_writes", str(log), str(runs))
    two = train(store, "mesh.fsdp=4", "--runs", str(runs), launch=2, program=recorder, XLA_FLAGS=FOUR)
    # 2 processes x 4 devices on the same data 2 x fsdp 4 mesh (each process one row of it): the
    # same summary and metrics as 8 devices in one process.
    assert_same_summary(two, eight)
    assert_close(metrics(two["run_dir"]), metrics(eight["run_dir"]))  # (each (step, split, name) once)
    # One run folder, written by process 0: each record renamed into place exactly once.
    run = Path(two["run_dir"])
    assert [p.name for p in runs.iterdir()] == [run.name]
    assert {"config.json", "dataset.json", "metrics.parquet", "summary.json", "checkpoints"} <= {
        p.name for p in run.iterdir()}
    first = writes(log, 0)
    renamed = Counter(path for event, path in first if event == "rename")
    for record in ("config.json", "dataset.json", "summary.json"):
        assert renamed[f"{run.name}/{record}"] == 1, record
    parts = [path for path in renamed if path.startswith(f"{run.name}/metrics.parquet/")]
    assert parts and all(renamed[path] == 1 for path in parts)
    # Process 1 trained into the same folder and wrote nothing there but its shards of each
    # checkpoint (not even a folder: process 0 made them all).
    second = writes(log, 1)
    assert second, "no record of process 1's writes"  # it ran under the recorder and wrote its shards
    assert [(event, path) for event, path in second if not path.startswith(f"{run.name}/checkpoints/")
            or event == "mkdir"] == []


@pytest.mark.slow
def test_a_two_process_run_stopped_by_sigterm_resumes_like_the_uninterrupted_run(store, one, tmp_path):
    run_dir = tmp_path / "run"
    experiment = str(ROOT / "tests" / "distributed" / "paused_digits.py")  # digits_mlp; waits for the signal
    args = [sys.executable, "-m", "pipeline", "launch", "-n", "2", "pipeline", "train", experiment, *RUN[1:],
            "--run-dir", str(run_dir), "--store", str(store.root), "--no-progress", "--no-compile-cache"]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        launcher = subprocess.Popen(args, stdout=out, stderr=err, env=env(PAUSE_AFTER_STEP="30"), cwd=ROOT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (run_dir / "checkpoints" / "20").is_dir():  # Orbax renames the finished checkpoint into place
            assert launcher.poll() is None, (tmp_path / "err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 20"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)  # launch passes it on to both processes
        code = launcher.wait(timeout=TIMEOUT_S)
    finally:
        if launcher.poll() is None:  # a second SIGTERM makes launch kill its processes
            launcher.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
    err = (tmp_path / "err").read_text()
    # Both processes agreed on a call boundary, saved there and stopped: exit 143 (SIGTERM). Which
    # boundary depends on when the signal landed: 30, or 40 where process 0 waits for it.
    assert code == 143, err[-3000:]
    errors = sorted(line for line in err.splitlines() if "error:" in line)
    assert errors, err[-3000:]
    stopped = errors[0].split("interrupted at step ")[-1].split(";")[0]
    message = f"error: interrupted at step {stopped}; a checkpoint is saved; resume with --run-dir {run_dir} --resume"
    assert stopped in ("30", "40") and errors == [f"[0] {message}", f"[1] {message}"], errors
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"20", stopped, "best"}
    assert not (run_dir / "summary.json").exists()
    # Resumed by 2 processes: the rest of the run, as if it had never stopped.
    resumed = train(store, "--run-dir", str(run_dir), "--resume", launch=2, experiment=experiment)
    assert resumed["steps"] == 60
    assert_close(metrics(run_dir), metrics(one["run_dir"]))
    assert_same_summary(resumed, one)


@pytest.mark.slow
def test_a_checkpoint_sharded_on_a_2x4_mesh_of_two_processes_resumes_on_a_1x8_mesh(store, one, tmp_path):
    # 2 processes x 4 devices, data 2 x fsdp 4 (a process a row of the mesh): the large arrays are
    # split over the 4 devices of each process. Orbax saves the jax.Arrays as they are sharded, each
    # process its own part (Orbax's records of the checkpoint say so).
    part = train(store, "steps=40", "mesh.fsdp=4", "--runs", str(tmp_path), launch=2, XLA_FLAGS=FOUR)
    run_dir = Path(part["run_dir"])
    assert part["steps"] == 40
    saved = run_dir / "checkpoints" / "40" / "state"
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= {p.name for p in saved.iterdir()}
    shardings = {base64.b64decode(key).decode(): json.loads(value)
                 for key, value in json.loads((saved / "_sharding").read_text()).items()}
    kernel = shardings["params.layers.0.kernel.value"]  # 64 x 64: split over fsdp
    assert (kernel["axis_names"], kernel["shape"], kernel["partition_spec"]) == (["data", "fsdp"], [2, 4], ["fsdp"])
    # Resumed by one process on data 1 x fsdp 8, restored straight onto those shardings: the run
    # continues as the uninterrupted one did.
    resumed = train(store, "--run-dir", str(run_dir), "--resume", "mesh.fsdp=8", XLA_FLAGS=EIGHT)
    assert resumed["steps"] == 60
    assert_close(metrics(run_dir), metrics(one["run_dir"]))
    assert_same_summary(resumed, one)


@pytest.mark.slow
def test_what_process_0_refuses_every_process_refuses_in_one_line(store, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("not a run")
    proc = pipeline("train", *RUN, "--run-dir", str(foreign), "--store", str(store.root), "--no-progress", launch=2)
    assert proc.returncode == 2
    message = f"bad value for '--run-dir': {foreign} exists and is not a run folder (it holds todo.txt)"
    errors = sorted(line for line in proc.stderr.splitlines() if "error:" in line)
    # Process 1 says so too, unless launch stopped it first (process 0 failed: its peers are stopped).
    assert errors in ([f"[0] error: {message}"], [f"[0] error: {message}", f"[1] error: process 0: {message}"])
    assert [p.name for p in foreign.iterdir() if not p.name.startswith(".")] == ["todo.txt"]


@pytest.mark.slow
def test_two_processes_stream_their_own_row_groups_into_one_run(store, tmp_path):
    imported = pipeline("data", "import", "builtin:digits", "--name", "digits_groups", "--row-group-mb", "0.02",
                        "--store", str(store.root))
    assert imported.returncode == 0, imported.stderr
    out = train(store, "data=digits_groups", "data.max_device_bytes=0", "steps=40", "--runs", str(tmp_path),
                launch=2)
    assert [p.name for p in tmp_path.iterdir()] == [Path(out["run_dir"]).name] and out["steps"] == 40
    losses = [v for (step, split, name), v in metrics(out["run_dir"]).items() if split == "train" and name == "loss"]
    assert len(losses) == 40 and np.isfinite(losses).all() and losses[-1] < losses[0]


def test_each_process_holds_one_contiguous_block_of_rows(monkeypatch):
    """The device-resident rule: rows are dealt in mesh order, processes on the outer axis, so process
    p holds the p-th contiguous block (padded to a multiple of the device count)."""
    import jax

    from pipeline.data import device

    class Device:
        def __init__(self, process_index: int):
            self.process_index = process_index

    class Mesh:
        def __init__(self, processes: int, per_process: int):
            self.devices = np.array([Device(p) for p in range(processes) for _ in range(per_process)])

    blocks = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        blocks.append(device.process_rows(1437, Mesh(2, 4)))
    # 1437 rows over 8 devices: 180 a device (1440, the last 3 padding); 720 a process.
    assert blocks == [(0, 720, 1440), (720, 1437, 1440)]
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert device.process_rows(130, Mesh(1, 1)) == (0, 130, 130)


def test_a_process_reads_only_the_row_groups_of_its_rows(workdir):
    from pipeline.data.device import read_rows
    from tests.data.conftest import write_numbered

    store = Store(workdir / "data")
    write_numbered(store, "n")  # 130 rows in 13 row groups of 10
    whole = store.read("n", "train")
    for start, stop in [(0, 65), (65, 130), (7, 8), (0, 130), (120, 130), (130, 130)]:
        part = read_rows(store, "n", "train", start, stop)
        np.testing.assert_array_equal(part.x, whole.x[start:stop])
        np.testing.assert_array_equal(part.y, whole.y[start:stop])
    # The streamed path deals row groups to processes instead: tests/data/test_stream.py
    # (test_shards_cover_every_example_once_per_epoch) checks that shards cover each row once an epoch.


@pytest.mark.slow
def test_two_streaming_processes_read_every_training_row_once_an_epoch(tmp_path):
    """Each process opens the StreamingReader as training does (its shard: process index of count,
    on the mesh of every device of both processes) over 130 numbered rows in 13 row groups of 10,
    and reports the row ids of the batches it placed on its own devices."""
    from tests.data.conftest import write_numbered

    data = Store(tmp_path / "data")
    write_numbered(data, "n")
    proc = pipeline(sys.executable, "-m", "tests.distributed.stream_epochs", str(data.root), "n", "20", "2", "drop",
                    "pad", launch=2, program=(), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted((json.loads(line.split("] ", 1)[1]) for line in proc.stdout.splitlines()
                      if line.split("] ", 1)[-1].startswith("{")), key=lambda r: r["process"])
    assert [(r["process"], r["processes"], r["devices"]) for r in reports] == [(0, 2, 4), (1, 2, 4)]
    owner = {row: (row // 10) % 2 for row in range(130)}  # row groups dealt round-robin: 7 to process 0, 6 to 1
    assert [(r["drop"]["rows"], r["pad"]["rows"]) for r in reports] == [(70, 70), (60, 60)]
    for epoch in range(2):
        # pad: every row once an epoch, read by the process that owns its row group.
        assert all(r["pad"]["steps_per_epoch"] == 7 for r in reports)
        for r in reports:
            assert {owner[row] for row in r["pad"]["epochs"][epoch]} == {r["process"]}
        padded = [row for r in reports for row in r["pad"]["epochs"][epoch]]
        assert sorted(padded) == list(range(130))
        # drop (the training default): 6 full steps of 10 rows a process, so process 1 reads all its
        # 60 rows and process 0 60 of its 70; the 10 left out are process 0's tail. No row twice.
        assert all(r["drop"]["steps_per_epoch"] == 6 for r in reports)
        kept = [row for r in reports for row in r["drop"]["epochs"][epoch]]
        assert len(kept) == len(set(kept)) == 120
        for r in reports:
            assert {owner[row] for row in r["drop"]["epochs"][epoch]} == {r["process"]}
        dropped = set(range(130)) - set(kept)
        assert len(dropped) == 10 and {owner[row] for row in dropped} == {0}
    # Each epoch in its own order.
    assert reports[0]["pad"]["epochs"][0] != reports[0]["pad"]["epochs"][1]


@pytest.mark.slow
def test_a_sweep_under_launch_is_one_line(store, tmp_path):
    proc = pipeline("sweep", "digits_mlp", "optimizer.learning_rate=choice(0.001;0.01)", "steps=20",
                    "--store", str(store.root), "--sweeps", str(tmp_path), "--no-progress", launch=2)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors and all(line.split("] ", 1)[1].startswith("error: pipeline sweep runs in one process, not 2")
                          for line in errors)
    assert not list(tmp_path.iterdir())


RAY_BLOCKED = ("import sys; sys.modules['ray'] = None; from pipeline.cli import main; "
               "sys.exit(main(sys.argv[1:]))")


def test_executor_ray_without_ray_is_one_line(store, tmp_path):
    proc = subprocess.run([sys.executable, "-c", RAY_BLOCKED, "sweep", "digits_mlp", "--executor", "ray",
                           "--store", str(store.root), "--sweeps", str(tmp_path)], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=TIMEOUT_S)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --executor ray needs Ray, which is not installed: pip install 'pipeline[ray]' (or pip install ray)"]
    assert not list(tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "-m", "pipeline", "sweep", "digits_mlp", "--ray-address", "auto",
                           "--store", str(store.root)], capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["error: --ray-address needs --executor ray"]
