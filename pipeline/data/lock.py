"""The store's write lock: an advisory ``fcntl.flock`` on ``ROOT/.lock``, held by every write.

Imports, overwrites and ``data gc`` hold it from start to end; readers never take it. The
holder writes one JSON line into the file after locking, ``{"pid": 4242, "host": "node-3",
"since": "2025-01-02T03:04:05+00:00", "what": "import 'digits'"}``, so a second writer can say
who holds it. The holder empties and unlinks the file before releasing, so an idle store has no
``.lock``; a process that wins the lock on a file that was unlinked meanwhile (its inode is no
longer the one at the path) drops it and tries again.

The lock is re-entrant within a process (a count per store root, behind a thread lock), so an
import that is already locked can call code that locks again. The kernel releases it when its
holder dies, ``SIGKILL`` included. Stores that are not on a local filesystem have no lock
(object stores have no ``flock``): there, one writer at a time is the user's business.

The lock and its holder line are ``pipeline.durable.locks``'s; the file is opened with
``O_NOFOLLOW``: a symbolic link planted at ``.lock`` is an error, and the file it points to is
never opened, nor is anything at ``.lock`` that is not a regular file.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.data.validate import DataError
from pipeline.durable import locks
from pipeline.durable.locks import LOCK_FILE


class StoreLocked(DataError):
    """Another process (or thread) holds the store's lock."""


@dataclass
class _Held:
    fd: int = -1
    depth: int = 0
    owner: int = 0  # thread ident
    guard: threading.Lock = field(default_factory=threading.Lock)  # serialises threads of this process


_HELD: dict[str, _Held] = {}
_REGISTRY = threading.Lock()


def _state(root: str) -> _Held:
    with _REGISTRY:
        return _HELD.setdefault(root, _Held())


def _describe(found: dict[str, Any] | None) -> str:
    """Who holds the lock, from its record: ``pid 4242 on node-3 (import 'digits' since ...)``."""
    try:
        what = f" ({found['what']} since {found['since']})" if found.get("what") else ""
        return f"pid {int(found['pid'])} on {found['host']}{what}"
    except (ValueError, TypeError, KeyError, AttributeError):
        return "another process (its pid and host are not recorded)"


def is_locked_by_me(root: str) -> bool:
    state = _HELD.get(root)
    return state is not None and state.depth > 0 and state.owner == threading.get_ident()


class StoreLock:
    """``with StoreLock(root, wait=False, what="import 'x'"):`` holds the store's lock.

    ``wait=False``: a lock held elsewhere raises one ``DataError`` line naming the holder's pid
    and host. ``wait=True`` blocks until it is free. ``acquired_first`` tells whether this was the
    outermost acquisition in this process (the moment to collect stale staging).
    """

    def __init__(self, root: str, wait: bool = False, what: str = ""):
        self.root, self.wait, self.what = root, wait, what
        self.path = os.path.join(root, LOCK_FILE)
        self.acquired_first = False
        self._state = _state(root)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        state = self._state
        me = threading.get_ident()
        if state.depth and state.owner == me:
            state.depth += 1
            return
        if not state.guard.acquire(blocking=self.wait):
            raise StoreLocked(f"the store {self.root} is locked by another thread of this process; "
                            "retry when it is done or wait for it")
        try:
            state.fd = self._lock_file()
        except BaseException:
            state.guard.release()
            raise
        state.depth, state.owner = 1, me
        self.acquired_first = True

    def release(self) -> None:
        state = self._state
        if not state.depth or state.owner != threading.get_ident():
            return
        state.depth -= 1
        if state.depth:
            return
        fd, state.fd, state.owner = state.fd, -1, 0
        try:
            os.ftruncate(fd, 0)
            if locks.same_file(fd, self.path):
                os.unlink(self.path)  # while still locked: a waiter then finds its inode gone and retries
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock
            state.guard.release()

    # -- the file ----------------------------------------------------------------------------------

    def _lock_file(self) -> int:
        while True:
            fd = self._open()
            try:
                try:
                    locks.lock(fd, self.wait)
                except locks.LockHeld as held:
                    raise StoreLocked(f"the store {self.root} is locked by {_describe(held.holder)}; retry when "
                                      "it is done, or use --wait") from None
                if not locks.same_file(fd, self.path):
                    os.close(fd)  # its holder unlinked it before releasing: lock the current file
                    continue
                locks.write_holder(fd, what=self.what, since=datetime.now(UTC).isoformat(timespec="seconds"))
                return fd
            except BaseException:
                os.close(fd)
                raise

    def _open(self) -> int:
        try:
            fd = locks.open_lock_file(self.path, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"{self.path}: is a symbolic link, not the store's lock file; remove it") from None
            raise DataError(f"{self.path}: cannot lock the store: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DataError(f"{self.path}: not a regular file, so not the store's lock file; remove it")
        return fd
