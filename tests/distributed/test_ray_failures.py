"""``pipeline sweep --executor ray`` never hangs: an address where nothing listens, GPUs the cluster
lacks and a task no node can start are each one line, within ``--ray-timeout``.

The command line runs against real Ray (a free loopback port; a one-CPU cluster without GPUs,
started by a holder process whose CPU a sleeping task keeps busy); the watchdog, the resource
check and the scheduling timeout also run in process against a stand-in for the ``ray`` module.
Skipped where Ray (the ``ray`` extra) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")

SWEEP = ["digits_mlp", "optimizer.learning_rate=choice(0.001;0.003)", "steps=40", "eval_every=20",
         "model.hidden=32", "plot=false", "--max-population", "1", "--vmap", "--no-progress", "--executor", "ray"]

# A one-CPU, GPU-less cluster whose CPU a sleeping task holds; prints its GCS address, lives until stdin closes.
HOLDER = """
import sys, time, ray
ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, configure_logging=False, _node_ip_address="127.0.0.1")

@ray.remote(num_cpus=1)
def hold():
    yield "running"
    time.sleep(3600)

busy = hold.remote()
ray.get(next(busy))
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


def environment() -> dict[str, str]:
    """This environment without the pipeline's, JAX's coordinator's and Ray's address variables. Ray
    enables token authentication on a cluster ``ray.init`` starts, which another process's driver
    cannot join without the token: the holder and the sweep both opt out. No usage reports."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIPELINE_", "XLA_FLAGS", "JAX_COORD", "RAY_ADDRESS"))}
    return {**env, "JAX_PLATFORMS": "cpu", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def sweep(tmp_path: Path, *extra: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "sweep", *SWEEP, "--store", str(tmp_path / "data"),
                           "--sweeps", str(tmp_path / "sweeps"), *extra], capture_output=True, text=True,
                          cwd=ROOT, env=environment(), timeout=timeout)
    return proc, time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def busy_cluster():
    """``127.0.0.1:PORT`` of a one-CPU cluster without GPUs whose only CPU is taken."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=environment())
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 180)
        line = holder.stdout.readline().strip() if ready else ""
        assert line, "the holder's Ray cluster did not start within 180 s"
        yield f"127.0.0.1:{line.rpartition(':')[2]}"
    finally:
        holder.stdin.close()  # the holder leaves, and ray's exit handler stops its cluster
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


# -- the command line against real Ray -------------------------------------------------------------


@pytest.mark.slow
def test_an_address_where_nothing_listens_is_one_line_within_the_timeout_and_no_folder(tmp_path):
    port = free_port()
    proc, took = sweep(tmp_path, "--ray-address", f"127.0.0.1:{port}", "--ray-timeout", "3", timeout=120)
    assert one_line(proc) == f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answered within 3 s"
    # 3 s of probing plus the interpreter's start and imports (seconds on an idle machine), not
    # the minutes ray.init retries an address for.
    assert took < 30, took
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_gpus_the_cluster_lacks_are_refused_before_anything_is_submitted(tmp_path, busy_cluster):
    proc, _ = sweep(tmp_path, "--ray-address", busy_cluster, "--ray-gpus", "1", "--ray-timeout", "20")
    assert one_line(proc) == (f"error: --ray-gpus 1: no node of the Ray cluster at {busy_cluster} has 1 GPU for "
                              "a population's task (it has 1 CPU and no GPUs on 1 node)")
    assert not (tmp_path / "sweeps").exists()  # refused before the sweep was resolved: nothing submitted


@pytest.mark.slow
def test_a_task_no_node_starts_in_time_is_one_line_and_the_sweep_resumable(tmp_path, busy_cluster):
    folder = tmp_path / "sweep"
    proc, _ = sweep(tmp_path, "--ray-address", busy_cluster, "--ray-timeout", "4", "--sweep-dir", str(folder))
    line = one_line(proc)
    assert line.startswith(f"error: --ray-timeout 4: no population's Ray task started on the Ray cluster at "
                           f"{busy_cluster} within 4 s (each asks for 1 CPU; free now: CPU 0 of 1)"), line
    assert line.endswith(f"continue the sweep with the same command and --sweep-dir {folder}")
    # As checkpointed: the plan and both trials, none run, nothing half-written.
    assert len(json.loads((folder / "sweep.json").read_text())["chunks"][0]) == 2
    trials = pq.read_table(folder / "trials.parquet").to_pydict()
    assert len(trials["trial"]) == 2 and "done" not in trials["status"]
    assert not list((folder / "checkpoints").glob("*"))  # no population began


# -- in process, a stand-in for ray ----------------------------------------------------------------


def test_ray_timeout_is_checked_before_anything_is_loaded(cli):
    for value in ("nan", "inf", "0", "-1"):
        result = cli("sweep", "digits_mlp", "--executor", "ray", "--ray-timeout", value)
        assert result.code == 2 and result.err.strip().splitlines() == [
            f"error: bad value for '--ray-timeout': {float(value)} must be a finite number of seconds above 0"]
    result = cli("sweep", "digits_mlp", "--ray-timeout", "5")
    assert result.code == 2 and result.err.strip() == "error: --ray-timeout needs --executor ray"


def test_ray_init_that_blocks_is_given_up_after_the_timeout():
    """Something listens (the TCP probe passes) but ``ray.init`` never returns: the watchdog stops
    waiting after ``--ray-timeout``."""
    from pipeline.errors import PipelineError
    from pipeline.sweep import ray_executor

    release = threading.Event()
    fake = SimpleNamespace(is_initialized=lambda: False, init=lambda **kwargs: release.wait(60))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        try:
            with pytest.raises(PipelineError) as caught:
                ray_executor._start(fake, address, 1.5)
        finally:
            release.set()
    assert str(caught.value) == f"--ray-address {address}: no Ray cluster answered within 1.5 s"
    assert time.monotonic() - started < 10


def test_a_refused_address_is_tried_until_the_timeout():
    from pipeline.errors import PipelineError
    from pipeline.sweep import ray_executor

    calls = []
    fake = SimpleNamespace(is_initialized=lambda: False, init=lambda **kwargs: calls.append(kwargs))
    port = free_port()
    started = time.monotonic()
    with pytest.raises(PipelineError, match=f"^--ray-address ray://127.0.0.1:{port}: no Ray cluster answered "
                                            "within 1 s$"):
        ray_executor._start(fake, f"ray://127.0.0.1:{port}", 1.0)
    assert 1.0 <= time.monotonic() - started < 10 and not calls  # ray.init is never reached


def cluster(*nodes: dict) -> SimpleNamespace:
    total: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0.0) + v
    return SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": n} for n in nodes]
                           + [{"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}],
                           cluster_resources=lambda: total)


def test_task_shapes_no_node_holds_are_refused_in_one_line():
    from pipeline.errors import PipelineError
    from pipeline.sweep.ray_executor import check_resources

    where = "the Ray cluster at 127.0.0.1:6379"
    check_resources(cluster({"CPU": 2.0}), 0.0, where)
    check_resources(cluster({"CPU": 0.0}, {"CPU": 4.0, "GPU": 2.0}), 2.0, where)
    with pytest.raises(PipelineError) as caught:
        check_resources(cluster({"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}), 2.0, where)
    assert str(caught.value) == (f"--ray-gpus 2: no node of {where} has 2 GPUs for a population's task (it has "
                                 "4 CPUs and 1 GPU on 2 nodes, at most 1 a node)")
    with pytest.raises(PipelineError) as caught:
        check_resources(cluster({"CPU": 0.0}), 0.0, where)
    assert str(caught.value) == (f"--executor ray: each population's task needs 1 CPU, and no node of {where} "
                                 "has one (it has no CPUs and no GPUs on 1 node)")
    with pytest.raises(PipelineError) as caught:
        check_resources(cluster({"CPU": 0.0, "GPU": 1.0}, {"CPU": 8.0}), 0.5, where)
    assert str(caught.value) == (f"--ray-gpus 0.5: no node of {where} has 0.5 GPUs and 1 CPU together (it has "
                                 "8 CPUs and 1 GPU on 2 nodes)")


class QueuedRay:
    """Ray with tasks that stay queued, or start (their generators yield STARTED) when told to."""

    def __init__(self, start: bool):
        self.start, self.cancelled, self.shut, self.waits = start, [], False, 0
        self.given: set = set()

    def is_initialized(self) -> bool:
        return not self.shut

    def remote(self, **resources):
        assert resources["num_cpus"] == 1 and resources["max_retries"] > 0
        return lambda function: SimpleNamespace(remote=lambda task, runner: iter([f"g{task.group}-c{task.index}"]))

    def wait(self, refs, num_returns, timeout):
        self.waits += 1
        ready = [r for r in refs if self.start and r not in self.given][:num_returns]
        self.given.update(ready)
        if not ready:
            time.sleep(timeout)
        return ready, [r for r in refs if r not in ready]

    def get(self, ref):
        from pipeline.sweep.ray_executor import STARTED

        return STARTED

    def cancel(self, ref, force):
        self.cancelled.append(ref)

    def shutdown(self):
        self.shut = True

    def available_resources(self):
        return {"CPU": 0.0}

    def cluster_resources(self):
        return {"CPU": 1.0}


def populations(fake: QueuedRay, tmp_path: Path, interrupted: dict, timeout: float) -> None:
    from pipeline.sweep import ray_executor
    from pipeline.sweep.runner import SweepOptions

    opts = replace(SweepOptions(), executor="ray", ray_address="127.0.0.1:6379", ray_timeout=timeout)
    groups = [SimpleNamespace(id=0, chunks=[[0], [1]], total_steps=10)]
    recs = {0: SimpleNamespace(status="pending"), 1: SimpleNamespace(status="pending")}
    ray_executor.run_populations(fake, "digits_mlp", [], SimpleNamespace(root=tmp_path), opts, tmp_path / "s",
                                 groups, recs, {}, interrupted, lambda: None, lambda *a: None, runner=None)


def test_tasks_that_never_start_are_cancelled_and_the_connection_shut_down(tmp_path, monkeypatch):
    from pipeline.errors import PipelineError
    from pipeline.sweep import ray_executor

    monkeypatch.setitem(ray_executor._connection, "ours", True)
    fake = QueuedRay(start=False)
    started = time.monotonic()
    with pytest.raises(PipelineError) as caught:
        populations(fake, tmp_path, {"set": False}, 1.0)
    assert str(caught.value) == ("--ray-timeout 1: no population's Ray task started on the Ray cluster at "
                                 "127.0.0.1:6379 within 1 s (each asks for 1 CPU; free now: CPU 0 of 1); continue "
                                 f"the sweep with the same command and --sweep-dir {tmp_path / 's'}")
    assert 1.0 <= time.monotonic() - started < 10
    assert len(fake.cancelled) == 2 and fake.shut


def test_once_a_task_has_started_the_others_may_queue_beyond_the_timeout(tmp_path, monkeypatch):
    from pipeline.sweep import ray_executor
    from pipeline.train.engine import Interrupted

    monkeypatch.setitem(ray_executor._connection, "ours", True)
    fake = QueuedRay(start=True)
    interrupted = {"set": False}
    original = fake.wait

    def wait(refs, num_returns, timeout):
        if fake.waits >= 6:  # 2 s past the 0.2 s timeout: Ctrl-C
            interrupted["set"] = True
        return original(refs, num_returns, timeout)

    fake.wait = wait
    with pytest.raises(Interrupted):
        populations(fake, tmp_path, interrupted, 0.2)
    assert not fake.shut and len(fake.cancelled) == 2  # interrupted, not refused: the tasks cancelled
