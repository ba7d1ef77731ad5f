"""``pipeline launch -n N COMMAND ...``: N local processes of COMMAND joined by ``jax.distributed``.

Each process gets ``PIPELINE_COORDINATOR=localhost:PORT`` (a free port unless ``--port``),
``PIPELINE_NUM_PROCESSES=N`` and ``PIPELINE_PROCESS_ID=i``, which
``pipeline.distributed.initialize`` reads. Every line a process prints comes out prefixed
``[i] ``, on stdout or stderr as it was written. When a process fails the others are stopped
(SIGTERM, then SIGKILL after ``--grace`` seconds) and launch exits with the failed one's status.
Ctrl-C and SIGTERM are passed on to every process; a second one kills them.

A COMMAND starting with ``pipeline`` runs as ``python -m pipeline`` with this interpreter, so
the processes use the same installation as the launcher. No JAX here: launch touches no device.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from pipeline.errors import PipelineError

MAX_PROCESSES = 1024
POLL_S = 0.05


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def child_env(rank: int, processes: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in ("PIPELINE_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)  # launch's own settings win
    env.update(PIPELINE_COORDINATOR=f"localhost:{port}", PIPELINE_NUM_PROCESSES=str(processes),
               PIPELINE_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
    return env


def command_line(command: Sequence[str]) -> list[str]:
    if command and command[0] == "pipeline":
        return [sys.executable, "-m", "pipeline", *command[1:]]
    return list(command)


def _forward(stream: IO[bytes], out: IO[str], prefix: str, lock: threading.Lock) -> None:
    """Copy ``stream`` to ``out`` line by line, each line prefixed."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\r\n")
        with lock:
            try:
                out.write(f"{prefix}{line}\n")
                out.flush()
            except (BrokenPipeError, ValueError):  # our reader left: keep draining so the child never blocks
                pass
    stream.close()


def _exit_status(returncode: int) -> int:
    """A shell's status: 128 + the signal's number for a process a signal ended."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_all(procs: list[subprocess.Popen], sig: int) -> None:
    """``sig`` to every process still running, and to what it started (each child leads its own group)."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass


def launch(processes: int, command: Sequence[str], port: int | None = None, grace_s: float = 10.0,
           stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run ``processes`` copies of ``command`` joined as one JAX program; their exit status."""
    from pipeline import signals

    if not 1 <= processes <= MAX_PROCESSES:
        raise PipelineError(f"bad value for '-n': {processes} must be between 1 and {MAX_PROCESSES}")
    if port is not None and not 1 <= port <= 65535:
        raise PipelineError(f"bad value for '--port': {port} must be between 1 and 65535")
    if grace_s < 0:
        raise PipelineError(f"bad value for '--grace': {grace_s} must not be negative")
    if not command:
        raise PipelineError("launch needs a COMMAND to run, e.g. pipeline launch -n 2 pipeline train digits_mlp")
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    port = free_port() if port is None else port
    argv = command_line(command)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    failed: int | None = None  # exit status of the first process that failed
    stop_deadline: float | None = None  # when the SIGTERMed processes get SIGKILL
    received: int | None = None  # the signal launch itself got
    with signals.sigint_flag() as flag:
        try:
            for rank in range(processes):
                try:
                    proc = subprocess.Popen(argv, env=child_env(rank, processes, port), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
                except OSError as exc:
                    raise PipelineError(f"launch: cannot start {argv[0]!r}: {exc.strerror or exc}") from None
                procs.append(proc)
                for stream, out in ((proc.stdout, stdout), (proc.stderr, stderr)):
                    thread = threading.Thread(target=_forward, args=(stream, out, f"[{rank}] ", lock), daemon=True)
                    thread.start()
                    threads.append(thread)
            while [p.poll() for p in procs].count(None):  # poll every one: each sets its returncode
                if flag["set"]:  # Ctrl-C or SIGTERM: pass it on; a second one kills
                    flag["set"] = False
                    first = received is None
                    received = flag["signal"]
                    _signal_all(procs, received if first else signal.SIGKILL)
                    stop_deadline = stop_deadline or time.monotonic() + grace_s
                if failed is None:
                    for p in procs:
                        if p.returncode not in (None, 0):
                            failed = _exit_status(p.returncode)
                            if received is None:
                                _signal_all(procs, signal.SIGTERM)
                                stop_deadline = time.monotonic() + grace_s
                            break
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    _signal_all(procs, signal.SIGKILL)
                time.sleep(POLL_S)
        finally:
            _signal_all(procs, signal.SIGKILL)  # an error in launch itself leaves nothing behind
            for p in procs:
                p.wait()
            for thread in threads:
                thread.join(timeout=5.0)
    if failed is None:
        failed = next((_exit_status(p.returncode) for p in procs if p.returncode), 0)
    if received is not None and failed == 0:
        failed = 128 + received
    return failed
