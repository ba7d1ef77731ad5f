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

A bad value is a ``PipelineError`` naming the variable. In one process ``is_primary()`` is
true and ``broadcast_from_primary`` and ``sync`` do nothing.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from typing import Any, NoReturn

from pipeline.errors import PipelineError

MODE = "PIPELINE_DISTRIBUTED"
COORDINATOR = ("PIPELINE_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
NUM_PROCESSES = ("PIPELINE_NUM_PROCESSES", "JAX_NUM_PROCESSES")
PROCESS_ID = ("PIPELINE_PROCESS_ID", "JAX_PROCESS_ID")
MODES = ("auto", "off")
TIMEOUT = "PIPELINE_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 300


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
    else 300) bounds the wait for the other processes.
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
    if jax.config.jax_cpu_collectives_implementation is None:  # cross-process collectives on CPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = (f"process {args['process_id']} of {args['num_processes']}, coordinator {args['coordinator_address']}"
             if len(args) == 3 else f"{MODE}=auto")
    if args.get("process_id", 0) != 0 and "coordinator_address" in args:
        _wait_for_coordinator(args["coordinator_address"], timeout_s, where)
    sigterm = _sigterm_handler()
    try:
        jax.distributed.initialize(**args, initialization_timeout=timeout_s)
    except (ValueError, TypeError) as exc:  # auto-detection found no cluster, or found half of one
        raise DistributedError(f"jax.distributed could not start ({where}): {_first_line(exc)}; set "
                               f"{COORDINATOR[0]}, {NUM_PROCESSES[0]} and {PROCESS_ID[0]}") from None
    except RuntimeError as exc:  # a device already in use, or a coordinator not reached in time
        raise DistributedError(f"jax.distributed could not start ({where}): {_first_line(exc)}") from None
    if sigterm is not None:  # JAX's preemption notifier took SIGTERM over (it only logs it): give it back
        signal.signal(signal.SIGTERM, sigterm)
    _leave_on_uncaught_exception()
    return True


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
    """An exception nobody caught: print it as usual, then ``leave`` (130 for Ctrl-C, else 1)."""
    previous = sys.excepthook
    if getattr(previous, "_leaves", False):
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        leave(130 if issubclass(kind, KeyboardInterrupt) else 1)

    hook._leaves = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _wait_for_coordinator(address: str, timeout_s: float, where: str) -> None:
    """Wait until process 0's coordinator accepts connections.

    JAX aborts the whole process (no Python exception) when the coordinator cannot be reached
    in time; this turns the common case (a wrong address, process 0 never started) into one line.
    """
    import socket
    import time

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
