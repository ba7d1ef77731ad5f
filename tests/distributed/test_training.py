"""Training across processes and meshes: 2 processes train like 1 into one run folder; FSDP on a 2 x 4
mesh trains like one device; a checkpoint saved on one mesh resumes on another; each process reads
its own rows; a sweep is one process (or Ray tasks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import Store, ensure_dataset
from tests.conftest import ROOT

NAMES = ("PIPELINE_DISTRIBUTED", "PIPELINE_COORDINATOR", "PIPELINE_NUM_PROCESSES", "PIPELINE_PROCESS_ID",
         "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS")
EIGHT = "--xla_force_host_platform_device_count=8"
# A small run: 60 steps in calls of 10, evaluated (and checkpointed) every 20.
RUN = ["digits_mlp", "steps=60", "eval_every=20", "steps_per_call=10", "checkpoint_every=20", "batch_size=32",
       "model.hidden=64", "plot=false"]
TIMEOUT_S = 240


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    return {**base, "JAX_PLATFORMS": "cpu", "PIPELINE_DISTRIBUTED_TIMEOUT": "60", **extra}


def pipeline(*args: str, launch: int = 0, **extra: str) -> subprocess.CompletedProcess:
    prefix = ["launch", "-n", str(launch), "pipeline"] if launch else []
    proc = subprocess.run([sys.executable, "-m", "pipeline", *prefix, *args], capture_output=True, text=True,
                          env=env(**extra), cwd=ROOT, timeout=TIMEOUT_S)
    return proc


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


def train(store: Store, *args: str, launch: int = 0, **extra: str) -> dict:
    proc = pipeline("train", *RUN, *args, "--store", str(store.root), "--no-progress", "--no-compile-cache", "--json",
                    launch=launch, **extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.lstrip("[0] ").startswith("{")][-1]
    return json.loads(last.split("] ", 1)[1] if last.startswith("[") else last)


def metrics(run_dir: str | Path) -> dict[tuple[int, str, str], float]:
    table = pq.read_table(Path(run_dir) / "metrics.parquet").to_pylist()
    return {(r["step"], r["split"], r["name"]): r["value"] for r in table}


def assert_same(got: dict, want: dict, steps: range, tol: float = 1e-6) -> None:
    keys = [k for k in want if k[0] in steps]
    assert keys and set(keys) == {k for k in got if k[0] in steps}
    worst = max(abs(got[k] - want[k]) for k in keys)
    assert worst < tol, f"largest difference {worst:.3g}"


@pytest.mark.slow
def test_two_processes_train_like_one_into_one_run_folder_and_resume_on_an_fsdp_mesh(store, tmp_path):
    one = train(store, "--runs", str(tmp_path / "one"))
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
    np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=0, atol=1e-6)
    assert sharded["test_loss_sum"] == pytest.approx(one["test_loss_sum"], rel=1e-6)


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
