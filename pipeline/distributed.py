"""Several processes joined into one JAX program through ``jax.distributed``.

``initialize()`` runs before anything touches a device (the command line calls it for
``train``, ``sweep`` and ``bench``). What it does is read from the environment:

* ``PIPELINE_COORDINATOR`` (``host:port`` of process 0), ``PIPELINE_NUM_PROCESSES`` and
  ``PIPELINE_PROCESS_ID``, or JAX's own names for them (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); ``pipeline launch`` sets the first three;
* ``PIPELINE_DISTRIBUTED=auto``: a cluster JAX detects by itself (SLURM, Open MPI, a Cloud
  TPU pod, Kubernetes, ...): ``jax.distributed.initialize()`` with only the values set above;
* ``PIPELINE_DISTRIBUTED=off``: one process, whatever else is set;
* nothing of the above: one process, and JAX is not even imported here.

``PIPELINE_DISTRIBUTED_TIMEOUT`` (seconds, default 300) bounds the wait for the others.

A bad value is a ``PipelineError`` naming the variable. So is every way the processes fail to
join, each one line with exit status 2, never JAX's fatal log: a coordinator that never answers,
a peer that never joins (a watchdog ends the wait at the timeout: JAX itself would abort the
process), a coordinator port already in use on process 0 (gRPC would fail, at times with a
segfault). In one process ``is_primary()`` is true and ``broadcast_from_primary`` and ``sync``
do nothing.

Under ``pipeline launch`` (``PIPELINE_LAUNCH_DIR`` set) a process registers there before it
joins: when a peer fails, launch kills it at once, since a joined process can neither go on nor
save a checkpoint without every peer. Elsewhere (SLURM, Kubernetes) a process whose peer is gone
stops on the first error that shows it (or on the manager's SIGTERM) with one line, not a traceback.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import socket
import sys
import threading
import time
from typing import Any, NoReturn

from pipeline.errors import PipelineError

MODE = "PIPELINE_DISTRIBUTED"
COORDINATOR = ("PIPELINE_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
NUM_PROCESSES = ("PIPELINE_NUM_PROCESSES", "JAX_NUM_PROCESSES")
PROCESS_ID = ("PIPELINE_PROCESS_ID", "JAX_PROCESS_ID")
MODES = ("auto", "off")
TIMEOUT = "PIPELINE_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 300
MAX_TIMEOUT_S = 7 * 24 * 3600
LAUNCH_DIR = "PIPELINE_LAUNCH_DIR"  # set by pipeline launch: where a process registers before it joins
JAX_TIMEOUT_MARGIN_S = 60  # JAX's own join timeout is this much longer than ours: our watchdog ends the wait first
# Errors that show a peer process is gone (its connection closed), in the first line of an exception.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Socket closed", "Broken pipe",
             "failed to connect to all addresses")


class DistributedError(PipelineError):
    """Processes that cannot be joined: a bad setting, or a coordinator that cannot be reached."""


def _env(names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, value) of the first of ``names`` set to something non-empty."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _int(name: str, text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise DistributedError(f"bad value for {name}: {text!r} is not {what}")
    return value


def _address(name: str, text: str) -> str:
    host, colon, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not colon or not host or not 1 <= number <= 65535:
        raise DistributedError(f"bad value for {name}: {text!r} is not HOST:PORT (a port from 1 to 65535)")
    return text


def settings() -> dict[str, Any] | None:
    """The arguments of ``jax.distributed.initialize`` the environment asks for; None for one process.

    Raises ``DistributedError`` naming the variable of a bad or missing value.
    """
    mode = os.environ.get(MODE, "").strip().lower()
    if mode and mode not in MODES:
        raise DistributedError(f"bad value for {MODE}: {os.environ[MODE]!r}; choose auto or off "
                               f"(or leave it unset and set {COORDINATOR[0]}, {NUM_PROCESSES[0]}, {PROCESS_ID[0]})")
    if mode == "off":
        return None
    found = {key: _env(names) for key, names in
             (("coordinator", COORDINATOR), ("num_processes", NUM_PROCESSES), ("process_id", PROCESS_ID))}
    if mode != "auto" and not any(found.values()):
        return None
    args: dict[str, Any] = {}
    if found["coordinator"]:
        args["coordinator_address"] = _address(*found["coordinator"])
    if found["num_processes"]:
        args["num_processes"] = _int(*found["num_processes"], 1, "a positive integer")
    if found["process_id"]:
        args["process_id"] = _int(*found["process_id"], 0, "a non-negative integer")
    if "num_processes" in args and "process_id" in args and args["process_id"] >= args["num_processes"]:
        name = found["process_id"][0]
        raise DistributedError(f"bad value for {name}: {args['process_id']} must be less than "
                               f"{found['num_processes'][0]}={args['num_processes']}")
    if mode != "auto":
        missing = [names[0] for key, names in
                   (("coordinator", COORDINATOR), ("num_processes", NUM_PROCESSES), ("process_id", PROCESS_ID))
                   if not found[key]]
        if missing:
            given = ", ".join(name for name, _ in filter(None, found.values()))
            raise DistributedError(f"{' and '.join(missing)} not set ({given} is); set all three, "
                                   f"or {MODE}=auto on a cluster JAX detects (SLURM, Open MPI, TPU pod)")
    return args


def initialize(timeout_s: int | None = None) -> bool:
    """Join the other processes if the environment says so; True when ``jax.distributed`` runs.

    Idempotent, and a no-op (without importing JAX) when nothing is configured. Must run
    before anything touches a device. ``timeout_s`` (default ``PIPELINE_DISTRIBUTED_TIMEOUT``,
    else 300) bounds the wait for the other processes: a coordinator that does not answer raises
    ``DistributedError``; peers that have not all joined by then end the process with one line on
    stderr and exit status 2 (JAX's wait cannot be interrupted: a watchdog thread ends it).
    """
    args = settings()
    if args is None:
        return joined()
    import jax

    if jax.distributed.is_initialized():
        return True
    if timeout_s is None:
        found = _env((TIMEOUT,))
        timeout_s = _int(*found, 1, "a positive number of seconds") if found else DEFAULT_TIMEOUT_S
        if timeout_s > MAX_TIMEOUT_S:  # JAX takes whole seconds in a C int; a week is plenty
            raise DistributedError(f"bad value for {TIMEOUT}: {found[1]!r} is more than {MAX_TIMEOUT_S} seconds")
    if jax.config.jax_cpu_collectives_implementation is None:  # cross-process collectives on CPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = (f"process {args['process_id']} of {args['num_processes']}, coordinator {args['coordinator_address']}"
             if len(args) == 3 else f"{MODE}=auto")
    deadline = time.monotonic() + timeout_s
    if args.get("process_id", 0) != 0 and "coordinator_address" in args:
        _wait_for_coordinator(args["coordinator_address"], timeout_s, where)
    if args.get("process_id") == 0 and "coordinator_address" in args:
        _check_coordinator_port(args["coordinator_address"], where)
    _register_with_launcher()
    sigterm = _sigterm_handler()
    watchdog = _JoinWatchdog(max(deadline - time.monotonic(), 1.0), timeout_s, where, args.get("num_processes"))
    try:
        jax.distributed.initialize(**args, initialization_timeout=int(timeout_s) + JAX_TIMEOUT_MARGIN_S)
    except (ValueError, TypeError) as exc:  # auto-detection found no cluster, or found half of one
        raise DistributedError(f"jax.distributed could not start ({where}): {_first_line(exc)}; set "
                               f"{COORDINATOR[0]}, {NUM_PROCESSES[0]} and {PROCESS_ID[0]}") from None
    except RuntimeError as exc:  # a device already in use, or a coordinator not reached in time
        raise DistributedError(f"jax.distributed could not start ({where}): {_first_line(exc)}") from None
    finally:
        watchdog.cancel()
    if sigterm is not None:  # JAX's preemption notifier took SIGTERM over (it only logs it): give it back
        signal.signal(signal.SIGTERM, sigterm)
    _leave_on_uncaught_exception()
    return True


class _JoinWatchdog:
    """Ends the process with one line when the processes have not all joined in time.

    ``jax.distributed.initialize`` waits inside C++ for every process to register and, at its own
    timeout, aborts the whole process with a fatal log (exit 134). It runs with a longer timeout
    than ours; this thread prints the error line at ours and leaves (exit status 2) instead.
    """

    def __init__(self, wait_s: float, timeout_s: float, where: str, processes: int | None):
        self.line = (f"error: jax.distributed could not start ({where}): not every process joined within "
                     f"{timeout_s:g} s; start all {processes or 'the'} processes, or wait longer with {TIMEOUT}")
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(wait_s,), name="pipeline-join-watchdog", daemon=True)
        self.thread.start()

    def _run(self, wait_s: float) -> None:
        if self.done.wait(wait_s):
            return
        try:
            print(self.line, file=sys.stderr)
        except (OSError, ValueError):
            pass
        leave(DistributedError.exit_code)

    def cancel(self) -> None:
        self.done.set()


def _check_coordinator_port(address: str, where: str) -> None:
    """Process 0 serves the coordinator: its port must be free (gRPC fails on a busy one, at times with a segfault)."""
    bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", "").strip() or address
    try:
        port = int(bind.rpartition(":")[2])
    except ValueError:
        return
    busy = port_in_use(port)
    if busy:
        raise DistributedError(f"jax.distributed could not start ({where}): port {port} is in use on this machine "
                               f"({busy}); choose another port in {COORDINATOR[0]}")


def port_in_use(port: int) -> str | None:
    """Why ``port`` cannot be served on this machine (``Address already in use``); None when it can.

    Binds it as the coordinator would, on every address, with ``SO_REUSEADDR`` (a port whose old
    connections linger is free; one a process listens on is not). Only a port in use counts: a port
    this user may not bind is for the coordinator to report.
    """
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:
                    pass
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return exc.strerror or "Address already in use"
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue
                return None
            return None
    return None


def _register_with_launcher() -> None:
    """Under ``pipeline launch``: note that this process joins the others (launch kills it when a peer fails)."""
    _tell_launcher("joined")


def _tell_launcher(what: str) -> bool:
    """Under ``pipeline launch``: leave the note ``what`` for this process in launch's folder; False elsewhere.

    ``joined``: this process joins the others; ``peer-gone``: it stops because a peer is gone, so it
    is not the process that failed first.
    """
    folder = os.environ.get(LAUNCH_DIR, "").strip()
    found = _env(PROCESS_ID)
    if not folder or found is None:
        return False
    try:
        with open(os.path.join(folder, f"{what}-{int(found[1])}"), "x"):
            pass
    except FileExistsError:
        pass
    except (OSError, ValueError):  # launch's folder is gone: no launch to tell
        return False
    return True


def launch_note(folder: str, rank: int, what: str) -> bool:
    """Whether process ``rank`` of a ``pipeline launch`` left the note ``what`` (``joined``, ``peer-gone``)."""
    return os.path.exists(os.path.join(folder, f"{what}-{rank}"))


def processes_asked_for() -> int:
    """How many processes run this command: the joined count, else what the environment says (else 1)."""
    if joined():
        return process_count()
    if os.environ.get(MODE, "").strip().lower() == "off":
        return 1
    found = _env(NUM_PROCESSES)
    try:
        return max(int(found[1]), 1) if found else 1
    except ValueError:
        return 1


def _sigterm_handler() -> Any:
    """This process's Python-level SIGTERM handler; None outside the main thread (where it cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def leave(code: int) -> NoReturn:
    """Exit now with status ``code``, skipping JAX's shutdown barrier.

    At exit JAX waits for every process to reach its end; a process that failed would wait for
    peers that may themselves wait for it in a collective. Leaving at once lets ``pipeline
    launch`` (or the cluster's manager) see the failure and stop the others. The command line
    does this for a failed command; a script run under ``launch`` can call it instead of
    ``sys.exit(code)``.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _leave_on_uncaught_exception() -> None:
    """An exception nobody caught: print it as usual, then ``leave`` (130 for Ctrl-C, else 1).

    When it shows a peer that is gone (its connection closed under a collective or a save's
    barrier), or follows a Ctrl-C or SIGTERM (the processes were stopping together and could not
    finish), it is one line instead of a traceback (``--debug`` shows it), and the status is
    128 + the signal's number after a signal: this process stops because another one did. Under
    ``pipeline launch`` a peer that is gone is launch's to name: this process then leaves quietly.
    """
    previous = sys.excepthook
    if getattr(previous, "_leaves", False):
        return

    def hook(kind, value, tb):
        stopped = _stopped_with_peers(kind, value)
        if stopped is None or "--debug" in sys.argv:
            previous(kind, value, tb)
        elif stopped[1] == 1 and _tell_launcher("peer-gone"):
            pass  # launch names the process that failed first; this one is not it
        else:
            try:
                print(f"error: {stopped[0]}", file=sys.stderr)
            except (OSError, ValueError):
                pass
        leave(stopped[1] if stopped else 130 if issubclass(kind, KeyboardInterrupt) else 1)

    hook._leaves = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _stopped_with_peers(kind: type, value: BaseException) -> tuple[str, int] | None:
    """(the line, the exit status) for an exception of a process that stops because its peers are gone or
    stopping; None for any other exception (a bug: its traceback is shown)."""
    if issubclass(kind, KeyboardInterrupt) or not joined():
        return None
    try:
        if process_count() < 2:
            return None
    except Exception:  # noqa: BLE001 - JAX already torn down: no several processes to speak of
        return None
    from pipeline import signals

    first = _first_line(value)
    gone = any(text in first for text in PEER_GONE)
    received = signals.last_signal()
    if received is not None:
        what = "and one of them is gone" if gone else "and they could not finish"
        return (f"stopped by {signal.Signals(received).name} while the processes were stopping together, {what} "
                f"({type(value).__name__}: {first}); the last complete checkpoint is kept", 128 + received)
    if gone:
        return f"another process is gone ({type(value).__name__}: {first}); this one stops too", 1
    return None


def _wait_for_coordinator(address: str, timeout_s: float, where: str) -> None:
    """Wait until process 0's coordinator accepts connections.

    JAX aborts the whole process (no Python exception) when the coordinator cannot be reached
    in time; this turns the common case (a wrong address, process 0 never started) into one line.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise DistributedError(f"jax.distributed could not start ({where}): no coordinator answered at "
                                       f"{address} within {timeout_s:g} s ({exc.strerror or exc})") from None
            time.sleep(0.25)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")


def joined() -> bool:
    """Whether ``jax.distributed`` runs in this process (by ``initialize`` or by someone else); never imports JAX."""
    jax = sys.modules.get("jax")
    return bool(jax is not None and jax.distributed.is_initialized())


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Process 0: the one that writes records. Always true in one process."""
    import jax

    return jax.process_index() == 0


def _is_array_tree(value: Any) -> bool:
    import jax
    import numpy as np

    leaves = jax.tree.leaves(value)
    return bool(leaves) and all(isinstance(leaf, (np.ndarray, np.generic, jax.Array)) for leaf in leaves)


def broadcast_from_primary(value: Any) -> Any:
    """Process 0's ``value`` on every process (in one process, ``value`` itself).

    A pytree of arrays goes through ``multihost_utils.broadcast_one_to_all`` (numpy arrays
    come back); any other picklable value (a path, a dict of settings, a string) is sent
    pickled. Every process must call it, with a value of the same structure for arrays.
    """
    import jax

    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    if _is_array_tree(value):
        return multihost_utils.broadcast_one_to_all(value)
    data = np.frombuffer(pickle.dumps(value), np.uint8) if is_primary() else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.array(data.size, np.int64)))
    padded = np.zeros(size, np.uint8)
    padded[: data.size] = data
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(padded)).tobytes())


def sync(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (in one process, return at once)."""
    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


# -- agreement through the coordination service ----------------------------------------------------
# Small host-side decisions (a run folder's name, whether to resume, a time-based checkpoint, a
# Ctrl-C on one host) travel through ``jax.distributed``'s key-value store, not through a device
# program: nothing waits for the compiled calls in flight, and no program is compiled for them.

_WAIT_MS = 24 * 3600 * 1000  # a peer may be compiling, evaluating or saving: wait for it (a dead one ends the job)
_uses: dict[str, int] = {}


def _client() -> Any:
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        raise DistributedError("several processes but no jax.distributed client: call "
                               "pipeline.distributed.initialize()")
    return client


def _key(name: str) -> str:
    """A key of its own for each use of ``name``: every process makes the same calls in the same order."""
    n = _uses[name] = _uses.get(name, -1) + 1
    return f"pipeline/{name}/{n}"


def share(name: str, value: Any) -> Any:
    """Process 0's ``value`` (anything picklable) on every process; ``value`` itself in one process.

    Every process calls it, in the same order as its other ``share`` calls of that ``name``. Goes
    through the coordination service (no device work), so it is cheap and never waits for a compiled
    call in flight. The others wait for process 0 to get there.
    """
    if process_count() == 1:
        return value
    import base64

    key = _key(f"share/{name}")
    client = _client()
    if is_primary():
        client.key_value_set(key, base64.b64encode(pickle.dumps(value)).decode())
        return value
    return pickle.loads(base64.b64decode(client.blocking_key_value_get(key, _WAIT_MS)))


def all_true(name: str, ok: bool) -> bool:
    """Whether ``ok`` holds on every process (a barrier); ``ok`` itself in one process."""
    if process_count() == 1:
        return ok
    import jax

    key = _key(f"all/{name}")
    client = _client()
    client.key_value_set(f"{key}/{jax.process_index()}", "1" if ok else "0")
    client.wait_at_barrier(f"{key}/barrier", _WAIT_MS)
    return all(value == "1" for _, value in client.key_value_dir_get(f"{key}/"))


class CallAgreement:
    """What every process does at a call boundary of a training loop, agreed by all.

    ``__call__(due, raised)``: ``due`` is a decision process 0 makes for everyone (a checkpoint
    by the clock, whose time differs on each host); ``raised`` a flag any process may raise (its
    Ctrl-C or SIGTERM), seen by all at the same boundary once process 0 has seen it. Returns the
    agreed ``(due, raised)``. One process: the arguments as they are, at no cost. Several: process
    0 reads the raised flags and publishes one small key a boundary; the others wait for it.
    """

    LAG = 16  # boundaries after which a published key is deleted (every process has read it long since)

    def __init__(self, name: str):
        self.several = process_count() > 1
        self.base = _key(f"agree/{name}") if self.several else ""
        self.boundary = 0
        self.voted = False

    def __call__(self, due: bool, raised: bool) -> tuple[bool, bool]:
        if not self.several:
            return due, raised
        import jax

        client = _client()
        if raised and not self.voted:
            client.key_value_set(f"{self.base}/raised/{jax.process_index()}", "1")
            self.voted = True
        self.boundary += 1
        key = f"{self.base}/call/{self.boundary}"
        if is_primary():
            raised = raised or bool(client.key_value_dir_get(f"{self.base}/raised/"))
            value = f"{int(due)}{int(raised)}"
            client.key_value_set(key, value)
            if self.boundary > self.LAG:
                client.key_value_delete(f"{self.base}/call/{self.boundary - self.LAG}")
        else:
            value = client.blocking_key_value_get(key, _WAIT_MS)
        return value[0] == "1", value[1] == "1"


def primary_does(name: str, work: Any) -> Any:
    """``work()`` run by process 0 alone, its result on every process; in one process, ``work()``.

    When it raises on process 0, the others raise too (a ``PipelineError`` with process 0's
    message) instead of waiting for a result that will never come.
    """
    if process_count() == 1:
        return work()
    if not is_primary():
        outcome, value = share(name, None)
        if outcome == "error":
            raise PipelineError(f"process 0: {value}")
        return value
    try:
        value = work()
    except BaseException as exc:
        share(name, ("error", _first_line(exc)))
        raise
    share(name, ("ok", value))
    return value
