"""``pipeline launch -n N COMMAND``: N processes joined by jax.distributed, their lines prefixed, failures stop all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT

NAMES = ("PIPELINE_DISTRIBUTED", "PIPELINE_COORDINATOR", "PIPELINE_NUM_PROCESSES", "PIPELINE_PROCESS_ID",
         "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS")
TIMEOUT_S = 120


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    return {**base, "JAX_PLATFORMS": "cpu", "PIPELINE_DISTRIBUTED_TIMEOUT": "60", **extra}


def launch(*args: str, timeout: float = TIMEOUT_S, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "launch", *args], capture_output=True, text=True,
                          env=env(**extra), cwd=ROOT, timeout=timeout)


def python(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


def lines(text: str, rank: int) -> list[str]:
    return [line.removeprefix(f"[{rank}] ") for line in text.splitlines() if line.startswith(f"[{rank}] ")]


COLLECTIVE = """
    import numpy as np
    from pipeline import distributed
    assert distributed.initialize()
    import jax
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(np.array(jax.process_index()))
    chosen = distributed.broadcast_from_primary({"run_dir": f"runs/chosen-by-{jax.process_index()}"})
    distributed.sync("printed")
    print("result", gathered.tolist(), jax.process_count(), jax.device_count(), distributed.is_primary(), chosen)
"""


def test_two_processes_join_and_gather_across_them():
    proc = launch("-n", "2", *python(COLLECTIVE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        assert f"result [0, 1] 2 2 {rank == 0} {{'run_dir': 'runs/chosen-by-0'}}" in lines(proc.stdout, rank)
    assert not [line for line in proc.stdout.splitlines() if not line.startswith(("[0] ", "[1] "))]


def test_each_process_gets_its_settings_and_streams_keep_their_prefix():
    proc = launch("-n", "3", "--port", "4567", *python("""
        import os, sys
        print(*(os.environ[f"PIPELINE_{k}"] for k in ("COORDINATOR", "NUM_PROCESSES", "PROCESS_ID")))
        print("to stderr", file=sys.stderr)
        sys.stdout.write("no newline at the end")
    """), PIPELINE_DISTRIBUTED="off")
    assert proc.returncode == 0, proc.stderr
    for rank in range(3):
        assert lines(proc.stdout, rank) == [f"localhost:4567 3 {rank}", "no newline at the end"]
        assert lines(proc.stderr, rank) == ["to stderr"]


def test_a_failing_process_stops_the_others_and_launch_exits_with_its_status():
    started = time.monotonic()
    proc = launch("-n", "2", *python("""
        import os, sys, time
        rank = int(os.environ["PIPELINE_PROCESS_ID"])
        print("started", flush=True)
        if rank == 1:
            time.sleep(0.5)
            sys.exit(3)
        time.sleep(100)
        print("never")
    """))
    assert proc.returncode == 3
    assert time.monotonic() - started < 60
    assert lines(proc.stdout, 0) == ["started"] and lines(proc.stdout, 1) == ["started"]


@pytest.mark.slow
def test_a_joined_process_that_raises_leaves_at_once_and_launch_stops_its_peer():
    # Process 0 waits in a collective for process 1, which fails instead: without leaving at once
    # process 1 would wait for process 0 at JAX's shutdown, and process 0 for the collective's timeout.
    started = time.monotonic()
    proc = launch("-n", "2", "--grace", "5", *python("""
        import numpy as np
        from pipeline import distributed
        distributed.initialize()
        import jax
        from jax.experimental import multihost_utils
        if jax.process_index() == 1:
            raise RuntimeError("process 1 fails")
        multihost_utils.process_allgather(np.array(0))
        print("never")
    """))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RuntimeError: process 1 fails" in lines(proc.stderr, 1)
    assert "never" not in proc.stdout
    assert time.monotonic() - started < 25  # less than gloo's 30 s collective timeout


@pytest.mark.slow
def test_a_failed_command_of_a_joined_process_leaves_at_once():
    proc = launch("-n", "2", "--grace", "5", *python("""
        import numpy as np
        from pipeline import distributed
        distributed.initialize()
        import jax
        from jax.experimental import multihost_utils
        if jax.process_index() == 1:
            from pipeline.cli import main
            main(["train", "no_such_experiment"])
            print("main returned")
        multihost_utils.process_allgather(np.array(0))
    """))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert lines(proc.stderr, 1)[-1].startswith("error: ") and "no_such_experiment" in lines(proc.stderr, 1)[-1]
    assert "main returned" not in proc.stdout


def test_sigterm_is_passed_on_to_every_process():
    script = python("""
        import os, signal, sys, time
        def stop(signum, frame):
            print("got", signum, flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(100)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "launch", "-n", "2", *script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        ready = [proc.stdout.readline(), proc.stdout.readline()]
        assert sorted(ready) == ["[0] ready\n", "[1] ready\n"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert sorted(out.splitlines()) == ["[0] got 15", "[1] got 15"]


@pytest.mark.parametrize("args, message", [
    (["-n", "0", "true"], "error: bad value for '-n': 0 must be between 1 and 1024"),
    (["-n", "2"], "error: launch needs a COMMAND to run"),
    (["-n", "2", "--port", "70000", "true"], "error: bad value for '--port': 70000 must be between 1 and 65535"),
    (["-n", "1", "no-such-program-here"], "error: launch: cannot start 'no-such-program-here': No such file"),
])
@pytest.mark.contract  # exit 2 and exactly one stderr line for refused arguments, from a real argv
def test_bad_arguments_are_one_line(args, message):
    proc = launch(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr


def test_launch_imports_no_jax():
    proc = subprocess.run(python(f"""
        import json, sys
        from pipeline.cli import main
        code = main(["launch", "-n", "2", {sys.executable!r}, "-c", "print('hi')"])
        print(json.dumps({{"code": code, "jax": "jax" in sys.modules}}))
    """), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()[:-1]) == ["[0] hi", "[1] hi"]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"code": 0, "jax": False}


@pytest.mark.slow
@pytest.mark.parametrize("devices, mesh, processes", [
    (1, ("1", "2"), [[0, 1]]),  # one device a process: fsdp spans the two processes
    (2, ("2", "2"), [[0, 0], [1, 1]]),  # two a process: each process holds a row of the mesh
])
def test_sharded_sgd_step_across_two_processes_equals_the_unsharded_step(devices, mesh, processes):
    proc = launch("-n", "2", sys.executable, "-m", "tests.distributed.sharded_step", *mesh,
                  XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):
        out = json.loads(lines(proc.stdout, rank)[-1])
        assert (out["process"], out["processes"]) == (rank, 2)
        assert out["mesh"] == {"data": int(mesh[0]), "fsdp": int(mesh[1])}
        assert out["mesh_processes"] == processes
        assert out["specs"] == {"w1": [None, "fsdp"], "w2": ["fsdp"], "b1": [], "b2": []}
        assert out["shard_shapes"]["w1"] == [64, 128]  # this process holds half of w1
        assert out["moved"] > 1e-2 and out["max_diff"] < 1e-6
