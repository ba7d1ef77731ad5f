"""The lock of a run or sweep folder: ``FOLDER/.lock``, held by the one process that writes in it.

The process that trains into a run folder, or runs a sweep, holds the lock (``locks``: one JSON
line with its pid, host, start time and command) for as long as it runs; another process is
refused with one line naming that pid. The lock file stays when the lock is released: the
kernel's lock, not the file, says whether the folder is in use.

Within a process the lock is re-entrant. ``folder_lock`` holds it for a block; ``hold_folder``
holds it for library calls that have no ``with`` around them, until ``lock_scope`` ends, the
object ``tie_lock_to`` named is collected, or the process exits.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.durable import locks
from pipeline.durable.locks import LOCK_FILE
from pipeline.errors import PipelineError


class FolderLocked(PipelineError):
    """A run or sweep folder in use by another process."""


class _Held:
    def __init__(self, fd: int):
        self.fd, self.pins, self.sticky = fd, 0, False


_HELD: dict[str, _Held] = {}
_STICKY_LIMIT = 64  # folders locked by library calls (no `with`) stay locked; at most this many


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _holder_text(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (pid unknown)"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('since', '?')})"


def _acquire(folder: Path, what: str) -> int:
    if not locks.available():  # the folder is not guarded
        return -1
    fd = locks.open_lock_file(Path(folder) / LOCK_FILE, 0o666)
    try:
        locks.lock(fd)
    except locks.LockHeld as held:
        os.close(fd)
        option = "--sweep-dir" if what.startswith("sweep") else "--run-dir"
        raise FolderLocked(f"{what} {folder} is in use by {_holder_text(held.holder)}; wait for it to finish "
                           f"or use another {option}") from None
    except BaseException:
        os.close(fd)
        raise
    locks.write_holder(fd, since=time.strftime("%Y-%m-%dT%H:%M:%S%z"), argv=sys.argv[:1] + sys.argv[1:3])
    return fd


def _release(key: str) -> None:
    held = _HELD.pop(key, None)
    if held is not None and held.fd >= 0:
        os.close(held.fd)  # closing the descriptor drops the flock


def hold_folder(folder: Path, what: str = "run folder") -> None:
    """Lock ``folder`` for this process (a no-op when it already holds it) until it exits.

    For library calls that have no ``with`` around them; ``folder_lock`` is the scoped form.
    """
    key = _key(folder)
    if key in _HELD:
        return
    held = _Held(_acquire(Path(folder), what))
    held.sticky = True
    _HELD[key] = held
    sticky = [k for k, h in _HELD.items() if h.sticky and h.pins == 0 and k != key]
    for old in sticky[: max(0, len(sticky) - _STICKY_LIMIT)]:
        _release(old)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "run folder") -> Iterator[None]:
    """Hold the lock of ``folder`` inside the block (re-entrant within this process)."""
    key = _key(folder)
    if key not in _HELD:
        _HELD[key] = _Held(_acquire(Path(folder), what))
    held = _HELD[key]
    held.pins += 1
    try:
        yield
    finally:
        held.pins -= 1
        if held.pins == 0 and _HELD.get(key) is held:
            _release(key)


def tie_lock_to(folder: Path, owner: object) -> None:
    """A lock ``hold_folder`` took for a library call ends when ``owner`` is garbage-collected.

    The training loop's metrics writer lives exactly as long as the run: ``pipeline.fit()``
    in a notebook leaves the run folder unlocked once it returns. A lock some ``with`` holds
    is left to that block.
    """
    key = _key(folder)
    held = _HELD.get(key)
    if held is not None and held.sticky:
        weakref.finalize(owner, _release_if_unpinned, key, held)


def _release_if_unpinned(key: str, held: _Held) -> None:
    if _HELD.get(key) is held and held.pins == 0:
        _release(key)


@contextlib.contextmanager
def lock_scope() -> Iterator[None]:
    """Release, at the end of the block, the folder locks ``hold_folder`` took inside it.

    ``pipeline.cli.main`` runs each command in one: a command run in a long-lived process
    (tests, a notebook) leaves no folder locked behind it.
    """
    before = set(_HELD)
    try:
        yield
    finally:
        for key in [k for k in _HELD if k not in before and _HELD[k].pins == 0]:
            _release(key)


def holds(folder: Path) -> bool:
    """Whether this process holds the lock of ``folder``."""
    return _key(folder) in _HELD


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """The pid, host and start of the process that locks ``folder`` now; None when nobody does."""
    return locks.holder_of(Path(folder) / LOCK_FILE)
