"""Processes that die, and options that would make them: ``pipeline launch`` and ``jax.distributed``
as a user meets them when something goes wrong.

Each case ends with one ``error:`` line (the children's own ``[i] `` lines may come before it, never
a traceback), a documented exit status, and nothing changed that should not change: a bad
``--grace``, ``-n`` or ``--port`` starts nothing; a child killed by SIGKILL is named in one line and
its joined peer stops at once, quietly, its last checkpoint whole; a child that exits with a status
is named with it, the others stopped within ``--grace``; a peer or coordinator that never comes is
one line within the timeout, not JAX's fatal log; a command that writes one folder is refused under
``launch -n 2`` (and under any launcher that starts several processes) before it writes anything.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.data import Store, ensure_dataset
from pipeline.launch import free_port
from tests.conftest import ROOT

NAMES = ("PIPELINE_DISTRIBUTED", "PIPELINE_COORDINATOR", "PIPELINE_NUM_PROCESSES", "PIPELINE_PROCESS_ID",
         "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS", "PIPELINE_LAUNCH_DIR")
# A small run: 60 steps in calls of 10, checkpointed every 20; tests/distributed/paused_digits.py holds
# it after step 30 until a signal, so a test can kill a process at a known step.
RUN = ["steps=60", "eval_every=20", "steps_per_call=10", "checkpoint_every=20", "batch_size=32", "model.hidden=8",
       "plot=false", "--no-progress", "--no-compile-cache"]
PAUSED = str(ROOT / "tests" / "distributed" / "paused_digits.py")
TIMEOUT_S = 240


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    return {**base, "JAX_PLATFORMS": "cpu", "PIPELINE_DISTRIBUTED_TIMEOUT": "60", **extra}


def pipeline(*args: str, timeout: float = TIMEOUT_S, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env(**extra),
                          cwd=ROOT, timeout=timeout)


def python(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


def error_lines(stderr: str) -> list[str]:
    """The lines that start with ``error:`` (launch's own, and a command's; not the children's ``[i] `` ones)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert error_lines(stderr) == [expected], stderr[-3000:]


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and content hash: what "unchanged" compares."""
    if not root.exists():
        return {}
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_file():
            found[key] = ("file", path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest())
        else:
            found[key] = ("dir",)
    return found


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


def child_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of ``pipeline launch``'s process ``rank`` (a child of the launcher with that PIPELINE_PROCESS_ID)."""
    wanted = f"PIPELINE_PROCESS_ID={rank}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher.pid and wanted in environ:
            return int(entry.name)
    raise AssertionError(f"no process {rank} under launcher {launcher.pid}")


# -- options: checked before anything starts ------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--grace", "nan", "error: bad value for '--grace': nan is not a finite number of seconds above 0"),
    ("--grace", "inf", "error: bad value for '--grace': inf is not a finite number of seconds above 0"),
    ("--grace", "0", "error: bad value for '--grace': 0.0 is not a finite number of seconds above 0"),
    ("--grace", "-5", "error: bad value for '--grace': -5.0 is not a finite number of seconds above 0"),
    ("-n", "0", "error: bad value for '-n': 0 must be between 1 and 1024"),
    ("-n", "1025", "error: bad value for '-n': 1025 must be between 1 and 1024"),
])
def test_a_bad_grace_or_count_is_one_line_and_starts_nothing(cli, tmp_path, option, value, message):
    started = tmp_path / "started"
    args = {"-n": "2", option: value}
    result = cli("launch", *[word for pair in args.items() for word in pair],
                 *python(f"open({str(started)!r}, 'w').close()"))
    assert result.code == 2
    assert result.err.splitlines() == [message]
    assert not started.exists()


def test_a_port_in_use_is_one_line_and_starts_nothing(cli, tmp_path):
    started = tmp_path / "started"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # listening on one address is enough to be in use
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("launch", "-n", "2", "--port", str(port), *python(f"open({str(started)!r}, 'w').close()"))
    assert result.code == 2
    assert result.err.splitlines() == [f"error: bad value for '--port': {port} is in use on this machine (Address "
                                       "already in use); choose a free port, or leave --port out for one"]
    assert not started.exists()


def test_process_0_refuses_a_coordinator_port_in_use_in_one_line(store, tmp_path):
    # Without launch (another launcher set the variables): process 0 serves the coordinator, and
    # gRPC would fail on a busy port (at times with a segfault).
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = pipeline("train", "digits_mlp", *RUN, "--store", str(store.root), "--runs", str(tmp_path / "runs"),
                        PIPELINE_COORDINATOR=f"localhost:{port}", PIPELINE_NUM_PROCESSES="2", PIPELINE_PROCESS_ID="0")
    assert proc.returncode == 2
    assert_one_error(proc.stderr, f"error: jax.distributed could not start (process 0 of 2, coordinator "
                                  f"localhost:{port}): port {port} is in use on this machine (Address already in use); "
                                  "choose another port in PIPELINE_COORDINATOR")
    assert not (tmp_path / "runs").exists()


# -- a child that dies -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("victim_rank", [1, 0])
def test_a_killed_process_is_one_line_and_its_joined_peer_stops_at_once_quietly(store, tmp_path, victim_rank):
    run_dir = tmp_path / "run"
    survivor = 1 - victim_rank
    args = [sys.executable, "-m", "pipeline", "launch", "-n", "2", "--grace", "60", "pipeline", "train", PAUSED, *RUN,
            "--run-dir", str(run_dir), "--store", str(store.root)]
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        launcher = subprocess.Popen(args, stdout=out, stderr=err, env=env(PAUSE_AFTER_STEP="30"), cwd=ROOT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # Process 0 holds the run after step 30 (its checkpoint of step 20 written), process 1 waits for it.
        while not (run_dir / "checkpoints" / "20").is_dir():
            assert launcher.poll() is None, (tmp_path / "err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 20"
            time.sleep(0.05)
        victim = child_pid(launcher, victim_rank)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        code = launcher.wait(timeout=TIMEOUT_S)
        took = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    err = (tmp_path / "err").read_text()
    assert code == 137, err[-3000:]  # 128 + SIGKILL, the status of the process that failed
    assert_one_error(err, f"error: process {victim_rank} (pid {victim}) was killed by SIGKILL; the other process was "
                          "stopped")
    # The survivor joined the victim: it can neither go on nor save without it, so launch killed it at
    # once (not after --grace 60), and shows nothing it printed after the victim died (when the
    # victim is process 0, the coordinator, JAX's client in process 1 logs the lost connection in the
    # moment before launch stops it: that is the aftermath, shown only with --debug).
    assert took < 20, took
    assert [line for line in err.splitlines() if line.startswith(f"[{survivor}] ")] == [], err[-3000:]
    # The run folder keeps its last complete checkpoint, and resumes from it.
    assert (run_dir / "checkpoints" / "20").is_dir() and not (run_dir / "summary.json").exists()
    if victim_rank == 1:
        # The run's own experiment and config (it was trained as the plugin's experiment, not digits_mlp).
        resumed = pipeline("train", "--run-dir", str(run_dir), "--resume", "--store", str(store.root))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (run_dir / "summary.json").is_file()


def test_a_process_that_exits_with_a_status_is_one_line_and_the_others_stop_within_grace():
    # Process 1 exits 3; process 0 ignores SIGTERM (SIGKILL after --grace 1 ends it); process 2 stops
    # on SIGTERM. None of them joined jax.distributed, so each gets SIGTERM first.
    script = python("""
        import os, signal, sys, time
        rank = int(os.environ["PIPELINE_PROCESS_ID"])
        print(os.getpid(), flush=True)
        if rank == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if rank == 1:
            time.sleep(1)
            sys.exit(3)
        time.sleep(120)
    """)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "launch", "-n", "3", "--grace", "1", *script],
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=TIMEOUT_S)
    took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    pid = next(line.split("] ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("[1] "))
    assert_one_error(proc.stderr, f"error: process 1 (pid {pid}) exited with status 3; the other 2 processes were "
                                  "stopped")
    assert took < 30, took  # not the 120 s the others would sleep


# -- a peer or a coordinator that never comes ------------------------------------------------------

@pytest.mark.parametrize("rank, message", [
    (0, "not every process joined within 3 s; start all 2 processes, or wait longer with "
        "PIPELINE_DISTRIBUTED_TIMEOUT"),
    (1, "no coordinator answered at localhost:{port} within 3 s (Connection refused)"),
])
def test_a_peer_or_coordinator_that_never_comes_is_one_line_within_the_timeout(store, tmp_path, rank, message):
    port = free_port()
    before = tree(store.root)
    started = time.monotonic()
    proc = pipeline("train", "digits_mlp", *RUN, "--store", str(store.root), "--runs", str(tmp_path / "runs"),
                    PIPELINE_COORDINATOR=f"localhost:{port}", PIPELINE_NUM_PROCESSES="2",
                    PIPELINE_PROCESS_ID=str(rank), PIPELINE_DISTRIBUTED_TIMEOUT="3")
    took = time.monotonic() - started
    # Not JAX's fatal log and exit 134: one line, status 2, once the 3 s are up (JAX's import aside).
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_one_error(proc.stderr, f"error: jax.distributed could not start (process {rank} of 2, coordinator "
                                  f"localhost:{port}): {message.format(port=port)}")
    assert "Check failure" not in proc.stderr and "Terminating process" not in proc.stderr, proc.stderr
    assert took < 60, took
    assert not (tmp_path / "runs").exists() and tree(store.root) == before


# -- commands that write one folder ----------------------------------------------------------------

# (`pipeline sweep` refuses itself once joined: test_training.py, test_a_sweep_under_launch_is_one_line.)
ONE_PROCESS = [
    (["sweep", "export", "sweeps/s", "--trial", "0"], "sweep export", "it writes one run folder"),
    (["data", "import", "builtin:digits", "--name", "d"], "data import", "it writes one dataset into the store"),
    (["data", "gc"], "data gc", "it collects the store once"),
    (["runs", "plot", "runs/r"], "runs plot", "it draws one set of plots"),
]


def refusal(name: str, why: str, processes: int = 2) -> str:
    return (f"pipeline {name} runs in one process, not {processes} joined by jax.distributed ({why}); run it "
            "without pipeline launch")


@pytest.mark.parametrize("args, name, why", ONE_PROCESS, ids=[case[1] for case in ONE_PROCESS])
def test_a_command_that_writes_one_folder_is_refused_by_launch_before_anything_starts(workdir, cli, monkeypatch, args,
                                                                                     name, why):
    monkeypatch.chdir(workdir)
    before = tree(workdir)
    result = cli("launch", "-n", "2", "pipeline", *args)
    assert result.code == 2
    assert result.err.splitlines() == [f"error: {refusal(name, why)}"]
    assert tree(workdir) == before


@pytest.mark.parametrize("args, name, why", ONE_PROCESS[1:], ids=[case[1] for case in ONE_PROCESS[1:]])
def test_a_command_that_writes_one_folder_refuses_under_another_launcher(workdir, cli, monkeypatch, args, name, why):
    # SLURM, a Kubernetes Job, a script: the environment says 3 processes, no launch in sight.
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("PIPELINE_COORDINATOR", "localhost:1234")
    monkeypatch.setenv("PIPELINE_NUM_PROCESSES", "3")
    monkeypatch.setenv("PIPELINE_PROCESS_ID", "1")
    before = tree(workdir)
    result = cli(*args)
    assert result.code == 2
    assert result.err.splitlines() == [f"error: {refusal(name, why, 3)}"]
    assert tree(workdir) == before


@pytest.mark.slow
def test_sweep_export_joined_in_two_processes_refuses_before_writing(store, tmp_path):
    # `python -c` rather than `pipeline`: launch does not recognise the command, so the two processes
    # start, join, and sweep export itself refuses (as it does under any other launcher).
    runs = tmp_path / "runs"
    main = "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = pipeline("launch", "-n", "2", sys.executable, "-c", main, "sweep", "export", str(tmp_path / "sweep"),
                    "--trial", "0", "--store", str(store.root), "--runs", str(runs))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    said = [line.split("] ", 1)[1] for line in proc.stderr.splitlines() if line.startswith(("[0] ", "[1] "))]
    # Each process says so, unless launch stopped it first (the other failed: its joined peer is killed).
    assert said and set(said) == {f"error: {refusal('sweep export', 'it writes one run folder')}"}, proc.stderr
    assert error_lines(proc.stderr) == []  # the failed process said why: launch adds nothing
    assert not runs.exists()


PEER_GONE = """
    import os, sys, time
    import numpy as np
    from pipeline import distributed, signals
    distributed.initialize()
    import jax
    from jax.experimental import multihost_utils
    multihost_utils.process_allgather(np.array(0))  # joined, and the collectives work
    if jax.process_index() == 1:
        distributed.leave(0)  # gone, as if killed: its connections close
    with signals.sigint_flag() as flag:
        print("ready", flush=True)
        while not flag["set"] and not os.path.exists(os.environ["GO_FILE"]):
            time.sleep(0.02)
        multihost_utils.process_allgather(np.array(1))  # the peer is gone: the collective fails
    print("never")
"""


@pytest.mark.parametrize("stop", ["sigterm", "none"])
def test_without_launch_a_process_whose_peer_is_gone_stops_in_one_line(tmp_path, stop):
    # Another launcher (SLURM's srun --kill-on-bad-exit, a Job controller) sends SIGTERM to the
    # survivors, or none: the first error that shows the peer is gone (here a collective's) is one line.
    go = tmp_path / "go"
    common = dict(PIPELINE_COORDINATOR=f"localhost:{free_port()}", PIPELINE_NUM_PROCESSES="2", GO_FILE=str(go))
    procs = [subprocess.Popen(python(PEER_GONE), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=env(PIPELINE_PROCESS_ID=str(rank), **common)) for rank in (0, 1)]
    try:
        for line in procs[0].stdout:  # (gloo prints a line of its own first)
            if line == "ready\n":
                break
        assert procs[1].wait(timeout=TIMEOUT_S) == 0
        if stop == "sigterm":
            procs[0].send_signal(signal.SIGTERM)
        else:
            go.touch()
        out, err = procs[0].communicate(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert "Traceback" not in err and "never" not in out, err[-3000:]
    [line] = error_lines(err)
    if stop == "sigterm":
        assert procs[0].returncode == 143, err[-3000:]
        assert line.startswith("error: stopped by SIGTERM while the processes were stopping together, and one of "
                               "them is gone (") and line.endswith("); the last complete checkpoint is kept"), line
    else:
        assert procs[0].returncode == 1, err[-3000:]
        assert line.startswith("error: another process is gone (") and line.endswith("); this one stops too"), line
