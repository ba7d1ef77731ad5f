"""Orbax checkpoints of a run or a sweep population: the train state and the engine's position.

A run's ``checkpoints/`` keeps the last K and ``checkpoints/best/`` the one with the best
evaluation metric; a population's ``checkpoints/gG-cC/`` keeps its last (the members' states
stacked). Each checkpoint holds the state pytree and a JSON ``meta`` item (step, data reader
position, every member's bookkeeping), so a resume continues exactly where it stopped.
Saves are asynchronous: Orbax writes from a host copy on
a background thread while training goes on, and a save waits only for the one before it
(Orbax commits each through a temporary folder and a rename, so a kill mid-write leaves the
previous checkpoint as it was). Orbax is imported on first use: a run that never saves
never pays for it.

A full disk: Orbax's background threads fail, log a traceback each, and the error surfaces at
the next save or wait. ``save``, ``wait`` and ``close`` turn it into ``DiskFull``, one line
(``PATH: No space left on device``), after removing the temporary folders of the failed saves
(``*.orbax-checkpoint-tmp*``); the checkpoints already written stay as they were, so a resume
starts from the last one. Orbax's own log records and thread tracebacks of a full disk are
dropped (``_quiet_orbax``): the caller's one line says it.

Several processes: the state's arrays span processes, so no process can copy it whole to its
host; Orbax saves the sharded ``jax.Array``s as they are (each process writes its own shards,
process 0 the metadata and the meta item) and every process calls every save, restore and
delete. Each manager synchronises under a barrier prefix of its own. A resume restores straight
onto the run's shardings (``onto``), whatever mesh the checkpoint was saved from: the saved
arrays are whole arrays, not per-device pieces.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from pipeline.durable.files import remove_until_quiet
from pipeline.durable.records import CorruptFile
from pipeline.errors import PipelineError, typed_line
from pipeline.train.evaluation import Bookkeeping

# Written into every checkpoint's meta (format 1 has none). 3: the optimizer state holds no step
# counter of its own, and hyperparameter switches that are off are not in it.
FORMAT = 3


class CannotResume(PipelineError):
    """A checkpoint that holds a different train state (an earlier version, another model)."""


class DiskFull(PipelineError):
    """A checkpoint or an export that did not fit on its disk: one line, ``PATH: No space left on device``."""


_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How TensorStore (under Orbax) words a full disk: "RESOURCE_EXHAUSTED: ... Failed to write N bytes
# to file F: No space left on device [os_error_code='28']".
_NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded", "os_error_code='28'", "os_error_code='122'")


def _says_disk_full(text: str) -> bool:
    text = text.lower()
    # RESOURCE_EXHAUSTED alone is also XLA's word for device memory: that is not a full disk.
    return any(t in text for t in _NO_SPACE_TEXTS) or ("resource_exhausted" in text and "memory" not in text)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or during, says the disk is full.

    Walks ``__cause__`` and ``__context__``: Orbax re-raises its threads' errors, and an
    ``OSError`` (``ENOSPC``, ``EDQUOT``) or TensorStore's text may be anywhere in the chain.
    """
    pending, seen = [exc], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS):
            return True
        if _says_disk_full(str(exc)):
            return True
        pending += [exc.__cause__, exc.__context__]
    return False


class _QuietDiskFull(logging.Filter):
    """Drops the records (absl's, asyncio's) of a save that failed on a full disk, a traceback per write:
    the error reaches the caller at the next save or wait, which says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if record.exc_info and is_disk_full(record.exc_info[1]):
            return False
        try:
            return not _says_disk_full(record.getMessage())
        except Exception:  # noqa: BLE001 - a record whose arguments do not format: let it through
            return True


_QUIETED = False


def _quiet_orbax() -> None:
    """Silence Orbax's own reports of a failure its caller turns into one line: full-disk absl and
    asyncio log records, an uncaught full-disk error of one of its threads (``threading.excepthook``), and the
    stale TensorStore callbacks that reach an asyncio loop Orbax closed after a failed save or
    restore (reported through ``sys.unraisablehook``)."""
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    # absl: Orbax's own records; asyncio: "Task exception was never retrieved" for each write of a
    # failed save that the loop's garbage collection finds, at any time later.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_QuietDiskFull())
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

    def quiet_thread_hook(args: threading.ExceptHookArgs) -> None:
        if not (is_disk_full(args.exc_value) and _frames_in(args.exc_traceback, "orbax")):
            thread_hook(args)  # else: the save's caller raises DiskFull

    def quiet_unraisable_hook(args: Any) -> None:
        if not _stale_loop_callback(args.exc_value, args.exc_traceback):
            unraisable_hook(args)

    threading.excepthook, sys.unraisablehook = quiet_thread_hook, quiet_unraisable_hook


def _frames_in(tb: Any, part: str) -> bool:
    """Whether a frame of the traceback ``tb`` runs code from a file whose path contains ``part``."""
    while tb is not None:
        if part in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _stale_loop_callback(value: BaseException, tb: Any) -> bool:
    """``RuntimeError: Event loop is closed`` raised in asyncio itself (or with no Python frame at all),
    called straight from native code: a TensorStore read or write that finished after the Orbax
    save or restore it belonged to had failed and closed its loop."""
    if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
        return False
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return all("asyncio" in f for f in frames)


def _join_orbax_threads(limit: float = 10.0) -> None:
    """Wait (up to ``limit`` seconds in all) for Orbax's worker threads that are still running.

    A failed save's error surfaces as soon as one of its writes fails; its other writes go on in
    threads of their own, and would write into folders deleted after the failure.
    """
    deadline = time.monotonic() + limit
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax"):
            threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))  # Orbax's join() re-raises


def _ocp():
    import orbax.checkpoint as ocp

    # Orbax logs every save at INFO; a run's own progress bar says enough.
    logging.getLogger("absl").setLevel(logging.WARNING)
    _quiet_orbax()
    return ocp


def barrier_prefix(directory: Path, role: str) -> str:
    """The barrier prefix of one manager: its role and folder, the same on every process (the folder's
    path is process 0's, shared), different for every manager that may be open at once."""
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:12]
    return f"pipeline-{role}-{digest}"


def _manager(directory: Path, keep: int, role: str, reader: bool = False):
    """An Orbax manager of ``directory``. A ``reader`` creates nothing, cleans nothing (a temporary
    folder may be a running save's) and saves synchronously (it never saves)."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if reader else keep, create=not reader, cleanup_tmp_directories=not reader,
        enable_async_checkpointing=not reader, **({"save_root_metadata": False} if reader else {}),
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=barrier_prefix(directory, role)))
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory.resolve(), options=options, item_handlers=handlers)


def _restore(manager: Any, step: int, like_state: Any | Callable[[dict], Any], onto: Any = None,
             check: Callable[[int, Any, dict], None] | None = None) -> tuple[Any, dict]:
    """Step ``step`` of ``manager``: its meta first (a population's size is in it), then the state
    shaped like ``like_state`` (or ``like_state(meta)``), as host arrays or straight onto ``onto``."""
    ocp = _ocp()
    meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    like = like_state(meta) if callable(like_state) else like_state
    like = jax.device_get(like) if onto is None else abstract(like, onto)
    if check is not None:
        check(step, like, meta)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like),
                                                              meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])


def several_processes() -> bool:
    return jax.process_count() > 1


def host_copy(state: Any) -> Any:
    """What a save writes from: the state on the host, since the device buffers are donated to the
    next step while Orbax writes. Several processes: the arrays themselves (no process holds them
    whole; Orbax copies each process's shards to its host before the save returns)."""
    return state if several_processes() else jax.device_get(state)


def keep_copy(state: Any) -> Any:
    """A copy of ``state`` that outlives the next step (which donates the state's buffers): on the
    host in one process, on the devices (same shardings) in several."""
    if not several_processes():
        return jax.device_get(state)
    return _device_copy(state)


@jax.jit
def _device_copy(tree: Any) -> Any:
    """A copy on the devices, each leaf where it was (compiled once per state layout)."""
    import jax.numpy as jnp

    return jax.tree.map(jnp.copy, tree)


def abstract(like: Any, onto: Any) -> Any:
    """Restore targets: ``like``'s shapes and dtypes on the shardings ``onto``."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), like, onto)


def _path_names(path: tuple) -> tuple[str, ...]:
    """A pytree path as plain names: a dataclass field, a dict key and a list index read alike."""
    return tuple(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _layout(tree: Any) -> dict[tuple[str, ...], tuple]:
    return {_path_names(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
    """The Orbax managers of one checkpoint folder: the latest K, and the best one."""

    def __init__(self, directory: Path, keep: int):
        self.directory, self.keep = Path(directory), keep
        self._latest = self._best = None

    @property
    def latest(self):
        if self._latest is None:
            self._latest = _manager(self.directory, self.keep, "latest")
        return self._latest

    @property
    def best(self):
        if self._best is None:
            self._best = _manager(self.directory / "best", 1, "best")
        return self._best

    def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
        """The latest checkpoint (and the best, when this step is it), written in the background.

        ``DiskFull`` when this save, or an earlier one still being written, met a full disk.
        """
        host_state = host_copy(state)
        with self._disk_full_in_one_line():
            self.latest.save(step, args=self._args(host_state, meta), force=True)
        if best:
            self.save_best(step, host_state, meta)

    def save_best(self, step: int, host_state: Any, meta: dict) -> None:
        with self._disk_full_in_one_line():
            self.best.save(step, args=self._args(host_state, meta), force=True)

    @contextlib.contextmanager
    def _disk_full_in_one_line(self) -> Iterator[None]:
        """A full disk met inside the block (now or by a background save) becomes ``DiskFull``."""
        try:
            yield
        except DiskFull:
            raise
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self._drop_failed_saves()
            raise DiskFull(f"{self.directory}: No space left on device") from exc

    def _drop_failed_saves(self) -> None:
        """Let every save in flight end (its error is the one being raised), then delete the
        temporary folders the failed ones left; the complete checkpoints stay."""
        for manager in (self._latest, self._best):
            if manager is not None:
                with contextlib.suppress(Exception):
                    manager.wait_until_finished()
        _join_orbax_threads()
        folders = (self.directory, self.directory / "best")
        remove_until_quiet(lambda: [t for f in folders for t in f.glob("*.orbax-checkpoint-tmp*")])

    @staticmethod
    def _args(host_state: Any, meta: dict):
        ocp = _ocp()
        return ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                  meta=ocp.args.JsonSave({**meta, "format": FORMAT}))

    def restore_latest(self, like_state: Any | Callable[[dict], Any], onto: Any = None) -> tuple[Any, dict] | None:
        """The newest readable checkpoint, shaped like ``like_state`` (or ``like_state(meta)``, for a
        population whose size its meta says); a corrupt one is skipped with a note on stderr.

        ``onto`` (shardings, a tree like the state): the state is restored as ``jax.Array``s
        straight onto them, whatever mesh it was saved from; else as host arrays. A checkpoint
        that holds a *different* state (an older format, or another model) is not
        corrupt: it raises ``CannotResume`` and nothing on disk changes. Several processes: all
        call it; a checkpoint is used only when every process could read it.
        """
        from pipeline import distributed

        self.latest.reload()
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = _restore(self.latest, step, like_state, onto, self._check_layout)
            except CannotResume:
                raise
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: fall back
                restored = exc
            if not distributed.all_true(f"restore-{step}", not isinstance(restored, Exception)):
                print(f"warning: checkpoint at step {step} is unreadable"
                      f"{f' ({type(restored).__name__})' if isinstance(restored, Exception) else ' by another process'}"
                      "; falling back to the previous one", file=sys.stderr)
                continue
            self._forget_after(step)
            return restored
        self._forget_after(-1)
        return None

    def _check_layout(self, step: int, like: Any, meta: dict) -> None:
        saved = _layout(self.latest.item_metadata(step)["state"].tree)
        wanted = _layout(like)
        if saved == wanted:
            return
        where = self.directory / str(step)
        if meta.get("format") is None:
            raise CannotResume(f"{where}: written by the first build of the pipeline, whose train state differs "
                               "from this version's; it cannot be resumed: train into a new --run-dir")
        if meta["format"] < FORMAT:
            raise CannotResume(f"{where}: written by an earlier version of the pipeline (checkpoint format "
                               f"{meta['format']}, now {FORMAT}) whose train state differs from this version's; it "
                               "cannot be resumed: train into a new --run-dir")
        differ = sorted(set(wanted) ^ set(saved)) or sorted(k for k in wanted if saved[k] != wanted[k])
        raise CannotResume(f"{where}: holds a different train state (first difference at "
                           f"'{'.'.join(differ[0])}'): was the model or optimizer changed? it cannot be resumed")

    def _forget_after(self, step: int) -> None:
        """Delete checkpoints newer than the one resumed from: the run will write them again."""
        for manager in (self.latest, self.best):
            manager.reload()
            for newer in [s for s in manager.all_steps() if s > step]:
                manager.delete(newer)

    def wait(self) -> None:
        """Wait for the saves in flight; ``DiskFull`` when one met a full disk."""
        with self._disk_full_in_one_line():
            for manager in (self._latest, self._best):
                if manager is not None:
                    manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the saves in flight and close the managers; ``DiskFull`` as ``wait``."""
        with self._disk_full_in_one_line():
            failed = None
            for manager in (self._latest, self._best):
                if manager is not None:
                    try:
                        manager.close()
                    except Exception as exc:  # noqa: BLE001 - close the other one too, then raise
                        failed = failed or exc
            if failed is not None:
                raise failed


def checkpoint_meta(step: int, wall_s: float, members: list[int], slots: list[int | None], live: Any,
                    books: dict[int, Bookkeeping], **extra: Any) -> dict:
    """A checkpoint's ``meta`` item: where the engine stands and every member's bookkeeping.

    ``members`` are the trials the population started with, ``slots`` the trial in each slot now
    (None: padding; successive halving repacks them) and ``live`` which slots still train.
    """
    return {"step": int(step), "wall_s": float(wall_s), "members": list(members), "slots": list(slots),
            "live": [bool(v) for v in live], "records": {str(t): books[t].to_json() for t in members}, **extra}


def books_from_meta(meta: dict) -> dict[int, Bookkeeping]:
    """Every member's bookkeeping in a checkpoint's meta (a format-1 run's meta held one, flat)."""
    if "records" not in meta:
        return {0: Bookkeeping.from_json(meta)}
    return {int(t): Bookkeeping.from_json(rec) for t, rec in meta["records"].items()}


def read_checkpoint(directory: Path, like_state: Any | Callable[[dict], Any]) -> tuple[Any, dict] | None:
    """The newest checkpoint in ``directory`` (``RUN_DIR/checkpoints``, ``.../best``, a sweep population's
    folder) as host arrays shaped like ``like_state`` (or ``like_state(meta)``), and its meta item.

    A reader: it takes no lock and writes nothing, so a process training into the folder meanwhile
    is not disturbed. Orbax opens the folder with nothing to create (a missing ``best/`` stays
    missing) and no clean-up of temporary folders (they may be a running save's). A checkpoint
    deleted by that process while it is read (its ``checkpoint_keep``) is read again from the
    newest one. None when the folder holds no checkpoint; one that cannot be read (truncated,
    damaged, another format) is one line naming its folder (``CorruptFile``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    step, failure = None, None
    with _manager(directory, 0, "read", reader=True) as manager:
        for _ in range(3):  # the newest step may be deleted by a training process while it is read
            manager.reload()
            newest = manager.latest_step()
            if newest is None or newest == step:
                break
            step = newest
            try:
                return _restore(manager, step, like_state)
            except PipelineError:
                raise
            except Exception as exc:  # noqa: BLE001 - Orbax and tensorstore raise ValueError, OSError, ...
                failure = exc
    if step is None:
        return None
    reason = typed_line(failure)
    if len(reason) > 300:
        reason = reason[:297] + "..."
    raise CorruptFile(f"{directory / str(step)}: unreadable checkpoint ({reason})")


def latest_meta(directory: Path) -> tuple[int, dict] | None:
    """The step and meta item of the newest checkpoint in ``directory``, its state left unread: where a
    resume would start (``pipeline train --resume`` says a finished run is finished from it).

    A reader, as ``read_checkpoint``. None when there is no checkpoint or its meta cannot be read
    (the resume itself then falls back to an older one, or says why in one line).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    ocp = _ocp()
    with _manager(directory, 0, "read", reader=True) as manager:
        step = manager.latest_step()
        if step is None:
            return None
        try:
            return step, dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception:  # noqa: BLE001 - unreadable: the resume decides (it falls back or refuses)
            return None
