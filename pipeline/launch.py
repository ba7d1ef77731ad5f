"""``pipeline launch -n N COMMAND ...``: N local processes of COMMAND joined by ``jax.distributed``.

Each process gets ``PIPELINE_COORDINATOR=localhost:PORT`` (a free port unless ``--port``),
``PIPELINE_NUM_PROCESSES=N`` and ``PIPELINE_PROCESS_ID=i``, which
``pipeline.distributed.initialize`` reads. Every line a process prints comes out prefixed
``[i] ``, on stdout or stderr as it was written. Ctrl-C and SIGTERM are passed on to every
process; a second one kills them.

Before anything starts, the options are checked (``-n`` from 1 to 1024, ``--grace`` a finite
number of seconds above 0, ``--port`` from 1 to 65535 and free on this machine), and a
``pipeline`` command that runs in one process (``ONE_PROCESS_COMMANDS``: it writes one folder or
store) is refused when N > 1. Each is one line naming the option or command, exit status 2.

When a process fails (exits non-zero, or a signal ends it) while launch has not been told to
stop, the others are stopped: a process that joined the others (``distributed.initialize``
registers it in launch's folder, ``PIPELINE_LAUNCH_DIR``) is killed at once, since it can neither
go on nor save without its peer (its last complete checkpoint stays); any other gets SIGTERM, then
SIGKILL after ``--grace`` seconds. What a joined process prints once a peer has failed (JAX's log
of a lost coordinator, a collective's error) is the aftermath, not shown (``--debug`` shows it). A
process that stops because its peer is gone says so in launch's folder, so launch names the one
that failed first. Launch then prints one line naming it, unless that process's own last line on
stderr was already an ``error:`` line saying why::

    error: process 1 (pid 4243) was killed by SIGKILL; the other process was stopped
    error: process 0 (pid 4242) exited with status 3; the other 3 processes were stopped

Exit status: 0 when every process exits 0; else the status of the process that failed first, as a
shell reports it (its own exit status, or 128 + the signal's number: 137 for SIGKILL, 134 for an
abort); 2 for a refused option or command; after Ctrl-C or SIGTERM to launch itself, the
processes' status (130 or 143).

A COMMAND starting with ``pipeline`` runs as ``python -m pipeline`` with this interpreter, so
the processes use the same installation as the launcher. No JAX here: launch touches no device.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from pipeline import distributed
from pipeline.errors import PipelineError

MAX_PROCESSES = 1024
POLL_S = 0.05

# `pipeline` commands that run in one process, and why: each writes one folder or store. Launch
# refuses them with N > 1 before starting anything; the commands refuse too when another launcher
# starts several (``refuse_several_processes``). `pipeline sweep` refuses itself, once joined
# (pipeline/sweep/runner.py, check_one_process), under launch as elsewhere.
ONE_PROCESS_COMMANDS = {
    "sweep export": "it writes one run folder",
    "data import": "it writes one dataset into the store",
    "data gc": "it collects the store once",
    "runs plot": "it draws one set of plots",
}


def one_process_message(name: str, processes: int) -> str:
    """The line that refuses ``pipeline NAME`` in ``processes`` processes."""
    return (f"pipeline {name} runs in one process, not {processes} joined by jax.distributed "
            f"({ONE_PROCESS_COMMANDS[name]}); run it without pipeline launch")


def refuse_several_processes(name: str) -> None:
    """Refuse ``pipeline NAME`` (one of ``ONE_PROCESS_COMMANDS``) when it is one of several processes.

    Launch refuses these commands itself; this catches the other launchers (SLURM, a Kubernetes
    Job, a script that sets ``PIPELINE_NUM_PROCESSES``), before anything is written.
    """
    processes = distributed.processes_asked_for()
    if processes > 1:
        raise PipelineError(one_process_message(name, processes))


def one_process_command(command: Sequence[str]) -> str | None:
    """The name in ``ONE_PROCESS_COMMANDS`` of a ``pipeline ...`` (or ``python -m pipeline ...``) command; else None."""
    words = list(command)
    if words[:1] == ["pipeline"]:
        words = words[1:]
    elif len(words) >= 3 and words[1:3] == ["-m", "pipeline"]:
        words = words[3:]
    else:
        return None
    if words[:1] == ["sweep-export"] or words[:2] == ["sweep", "export"]:
        return "sweep export"
    name = " ".join(words[:2])
    return name if name in ONE_PROCESS_COMMANDS else None


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def child_env(rank: int, processes: int, port: int, base: dict[str, str] | None = None,
              launch_dir: str | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in ("PIPELINE_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 distributed.LAUNCH_DIR):
        env.pop(name, None)  # launch's own settings win
    env.update(PIPELINE_COORDINATOR=f"localhost:{port}", PIPELINE_NUM_PROCESSES=str(processes),
               PIPELINE_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
    if launch_dir is not None:
        env[distributed.LAUNCH_DIR] = launch_dir
    return env


def command_line(command: Sequence[str]) -> list[str]:
    if command and command[0] == "pipeline":
        return [sys.executable, "-m", "pipeline", *command[1:]]
    return list(command)


def _forward(stream: IO[bytes], out: IO[str], prefix: str, lock: threading.Lock, last: list[str] | None = None,
             drop: Callable[[str], bool] | None = None) -> None:
    """Copy ``stream`` to ``out`` line by line, each line prefixed; ``last`` keeps the last line shown.

    A line for which ``drop(line)`` is true is read (the child never blocks) but not shown.
    """
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\r\n")
        if drop is not None and drop(line):
            continue
        if last is not None:
            last[:] = [line]
        with lock:
            try:
                out.write(f"{prefix}{line}\n")
                out.flush()
            except (BrokenPipeError, ValueError):  # our reader left: keep draining so the child never blocks
                pass
    stream.close()


class _Aftermath:
    """Which lines of a joined process are the aftermath of a peer's failure, not news.

    A process that joined the others cannot go on once one of them has failed; what it prints
    then (JAX's log of the lost coordinator, an error of a collective whose peer is gone) is a
    consequence of the failure launch names in its own line, and is not shown (``--debug`` shows
    it). Launch notices a failure only at its next poll, so each line checks, without reaping,
    whether another process has already ended with a failure; a line that speaks of a lost
    connection may arrive while the peer is still dying, and waits up to ``HOLD_S`` to see.
    """

    HOLD_S = 0.25
    LOST = ("Socket closed", "UNAVAILABLE", "coordination service", "coordination_service",
            "Connection closed by peer", "Connection reset by peer", "Terminating process because")

    def __init__(self, procs: list[subprocess.Popen], launch_dir: str, show: bool):
        self.procs, self.launch_dir, self.show = procs, launch_dir, show
        self.stopping = False  # launch passed on a Ctrl-C or SIGTERM: the processes stop together, each says so

    def drop(self, rank: int) -> Callable[[str], bool]:
        def peer_failed() -> bool:
            return any(_has_failed(p) for r, p in enumerate(list(self.procs)) if r != rank)

        def check(line: str) -> bool:
            if self.show or self.stopping or not distributed.launch_note(self.launch_dir, rank, "joined"):
                return False
            if peer_failed():
                return True
            if not any(text in line for text in self.LOST):
                return False
            deadline = time.monotonic() + self.HOLD_S
            while time.monotonic() < deadline:
                time.sleep(0.01)
                if peer_failed():
                    return True
            return False

        return check


def _has_failed(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has ended other than with status 0, looked up without reaping it."""
    if proc.returncode is not None:
        return proc.returncode != 0
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped meanwhile: its returncode is being set
        return proc.returncode not in (None, 0)
    return info is not None and (info.si_code != os.CLD_EXITED or info.si_status != 0)


def _exit_status(returncode: int) -> int:
    """A shell's status: 128 + the signal's number for a process a signal ended."""
    return 128 - returncode if returncode < 0 else returncode


def _ended(returncode: int) -> str:
    """How a process ended, in words: ``was killed by SIGKILL``, ``exited with status 3``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _signal_all(procs: list[subprocess.Popen], sig: int) -> None:
    """``sig`` to every process still running, and to what it started (each child leads its own group)."""
    for proc in procs:
        _signal(proc, sig)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _first_failed(procs: list[subprocess.Popen], launch_dir: str) -> int | None:
    """The rank of the process that failed first, of those that have failed (None: none has).

    Several may be found at once: one that stopped because its peer was gone (it says so in
    launch's folder) is a consequence, not the cause; of the others, the lowest rank.
    """
    failed = [rank for rank, p in enumerate(procs) if p.returncode not in (None, 0)]
    causes = [rank for rank in failed if not distributed.launch_note(launch_dir, rank, "peer-gone")]
    return (causes or failed or [None])[0]


def check_options(processes: int, command: Sequence[str], port: int | None, grace_s: float) -> None:
    """Every option of ``launch``, checked before anything starts: one line naming the one at fault."""
    if not 1 <= processes <= MAX_PROCESSES:
        raise PipelineError(f"bad value for '-n': {processes} must be between 1 and {MAX_PROCESSES}")
    if not (isinstance(grace_s, (int, float)) and math.isfinite(grace_s) and grace_s > 0):
        raise PipelineError(f"bad value for '--grace': {grace_s} is not a finite number of seconds above 0")
    if not command:
        raise PipelineError("launch needs a COMMAND to run, e.g. pipeline launch -n 2 pipeline train digits_mlp")
    if port is not None:
        if not 1 <= port <= 65535:
            raise PipelineError(f"bad value for '--port': {port} must be between 1 and 65535")
        busy = distributed.port_in_use(port)
        if busy:
            raise PipelineError(f"bad value for '--port': {port} is in use on this machine ({busy}); "
                                "choose a free port, or leave --port out for one")
    name = one_process_command(command)
    if name is not None and processes > 1:
        raise PipelineError(one_process_message(name, processes))


def launch(processes: int, command: Sequence[str], port: int | None = None, grace_s: float = 10.0,
           stdout: IO[str] | None = None, stderr: IO[str] | None = None, debug: bool = False) -> int:
    """Run ``processes`` copies of ``command`` joined as one JAX program; the exit status (see the module).

    ``debug``: show every line, the aftermath of a failure in joined processes included.
    """
    from pipeline import signals

    check_options(processes, command, port, grace_s)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    port = free_port() if port is None else port
    argv = command_line(command)
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    last_err: list[list[str]] = []  # each process's last line on stderr
    failed: int | None = None  # the rank of the first process that failed
    consequence = False  # whether it said it stopped because a peer was gone
    stopped = 0  # processes still running when it failed (launch stopped them)
    stop_deadline: float | None = None  # when the stopped processes get SIGKILL
    received: int | None = None  # the signal launch itself got
    launch_dir = tempfile.mkdtemp(prefix="pipeline-launch-")  # where joined processes register
    aftermath = _Aftermath(procs, launch_dir, show=debug)
    with signals.sigint_flag() as flag:
        try:
            for rank in range(processes):
                try:
                    proc = subprocess.Popen(argv, env=child_env(rank, processes, port, launch_dir=launch_dir),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            start_new_session=True)
                except OSError as exc:
                    raise PipelineError(f"launch: cannot start {argv[0]!r}: {exc.strerror or exc}") from None
                procs.append(proc)
                last_err.append([])
                for stream, out, last in ((proc.stdout, stdout, None), (proc.stderr, stderr, last_err[-1])):
                    thread = threading.Thread(target=_forward, args=(stream, out, f"[{rank}] ", lock, last,
                                                                     aftermath.drop(rank)), daemon=True)
                    thread.start()
                    threads.append(thread)
            while [p.poll() for p in procs].count(None):  # poll every one: each sets its returncode
                if flag["set"]:  # Ctrl-C or SIGTERM: pass it on; a second one kills
                    flag["set"] = False
                    first = received is None
                    received = flag["signal"]
                    aftermath.stopping = True
                    _signal_all(procs, received if first else signal.SIGKILL)
                    stop_deadline = stop_deadline or time.monotonic() + grace_s
                if failed is None:
                    failed = _first_failed(procs, launch_dir)
                    if failed is not None and received is None:
                        stopped = sum(p.returncode is None for p in procs)
                        for rank, p in enumerate(procs):  # a joined process cannot go on, nor save, without its peer
                            _signal(p, signal.SIGKILL if distributed.launch_note(launch_dir, rank, "joined")
                                    else signal.SIGTERM)
                        stop_deadline = time.monotonic() + grace_s
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    _signal_all(procs, signal.SIGKILL)
                time.sleep(POLL_S)
            if failed is None:  # every process ended between two polls
                failed = _first_failed(procs, launch_dir)
            consequence = failed is not None and distributed.launch_note(launch_dir, failed, "peer-gone")
        finally:
            _signal_all(procs, signal.SIGKILL)  # an error in launch itself leaves nothing behind
            for p in procs:
                p.wait()
            for thread in threads:
                thread.join(timeout=5.0)
            shutil.rmtree(launch_dir, ignore_errors=True)
    if failed is None:
        return 128 + received if received is not None else 0
    proc = procs[failed]
    if received is None and not (last_err[failed] and last_err[failed][0].startswith("error: ")):
        ended = _ended(proc.returncode) + (" when another process it was joined with was gone" if consequence else "")
        others = ("" if not stopped else "; the other process was stopped" if stopped == 1
                  else f"; the other {stopped} processes were stopped")
        with lock:
            try:
                print(f"error: process {failed} (pid {proc.pid}) {ended}{others}", file=stderr)
                stderr.flush()
            except (BrokenPipeError, ValueError):
                pass
    return _exit_status(proc.returncode)
