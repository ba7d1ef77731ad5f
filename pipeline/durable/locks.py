"""One advisory lock: an exclusive ``fcntl.flock`` on a lock file that names its holder.

The holder writes one JSON line into the file right after locking: its pid, its host and the
fields its caller adds (``since``, what it does), so a process refused the lock can say who
holds it. The file is opened with ``O_NOFOLLOW`` (a symbolic link planted there is an error,
the file it points to is never opened), ``O_CLOEXEC`` (a child process inherits no lock) and
``O_NONBLOCK`` (a FIFO planted there does not hang the open). The kernel drops the lock when
the descriptor is closed, and when its process dies, ``SIGKILL`` included.

The store's lock (``pipeline.data.lock``) and the locks of run and sweep folders
(``folder_locks``) are built on these functions; each adds its own rules and messages.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # no advisory locks on this platform
    fcntl = None

LOCK_FILE = ".lock"
_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
          | getattr(os, "O_NONBLOCK", 0))
_HOLDER_READS, _HOLDER_PAUSE = 100, 0.01  # the holder writes its line just after locking: give it a moment


class LockHeld(Exception):
    """Another open file holds the lock; ``holder`` is its JSON record (None when it cannot be read)."""

    def __init__(self, holder: dict[str, Any] | None):
        super().__init__("locked by another process")
        self.holder = holder


def available() -> bool:
    """Whether this platform has ``flock`` (without it nothing is locked)."""
    return fcntl is not None


def open_lock_file(path: str | Path, mode: int = 0o644) -> int:
    """A descriptor of the lock file ``path``, made when missing; OSError (ELOOP for a symbolic link) else."""
    return os.open(path, _FLAGS, mode)


def lock(fd: int, wait: bool = False) -> None:
    """Take the exclusive lock of ``fd``: wait for it, or raise ``LockHeld`` naming its holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        raise LockHeld(read_holder(fd)) from None


def write_holder(fd: int, **fields: Any) -> None:
    """Replace the file's content with one JSON line: this pid, this host, then ``fields`` in order."""
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **fields})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (line + "\n").encode(), 0)


def read_holder(fd: int) -> dict[str, Any] | None:
    """The holder's record in the file ``fd``; None while it stays empty, or when it is not a JSON object."""
    for _ in range(_HOLDER_READS):
        raw = os.pread(fd, 4096, 0)
        if raw.strip():
            return _record(raw)
        time.sleep(_HOLDER_PAUSE)
    return None


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        found = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def holder_of(path: str | Path) -> dict[str, Any] | None:
    """The record of the process that locks ``path`` now; None when nobody does, {} when unreadable.

    Probes with a shared lock, so it never takes the lock from anyone nor writes to the file.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.pread(fd, 4096, 0).decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                return {}
        return None
    finally:
        os.close(fd)


def same_file(fd: int, path: str | Path) -> bool:
    """Whether ``fd`` is the file at ``path`` now (not one unlinked, or replaced, since it was opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

