"""Writing files so that a crash leaves the old content or the new one, never a part of either.

Every small file is written through a new, uniquely named temporary file opened with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (a planted symlink is never followed), fsynced, renamed over
the target and committed with an fsync of the folder (``write_with``, ``write_bytes``,
``write_json``, ``write_parquet``). A folder tree written elsewhere is committed with
``fsync_tree`` before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


# -- fsync -------------------------------------------------------------------------------------
def fsync_path(path: str | Path, directory: bool = False) -> None:
    """fsync one file (or, with ``directory``, one folder); never follows a link, any error is raised."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0) | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file below ``root``, then every folder, deepest first, ``root`` last."""
    folders = []
    for here, _dirs, names in os.walk(root):
        for name in names:
            fsync_path(os.path.join(here, name))
        folders.append(here)
    for folder in reversed(folders):
        fsync_path(folder, directory=True)


def fsync_dir(folder: str | Path) -> None:
    """Commit the entries of ``folder`` (a rename or an unlink in it) to disk.

    A platform or file system whose folders cannot be opened or fsynced has nothing to commit.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# -- atomic files ------------------------------------------------------------------------------
def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path``: ``.NAME.PID.RANDOM.tmp`` (readers and globs skip it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _create_exclusive(path: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = temporary_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o666)
        except FileExistsError:  # taken (or planted) a moment ago: draw another name
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def write_with(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` atomically: ``write(file)`` fills a new O_EXCL temporary file, then fsync and rename."""
    path = Path(path)
    fd, tmp = _create_exclusive(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.filename is None:  # a failed write or fsync (a full disk) names no file: name the target
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_into_new_folders(path: Path, write: Callable[[Any], None]) -> None:
    """``write_with`` into ``path``, making its missing folders first; on failure the folders this call
    made are removed again, so a failed write leaves nothing behind."""
    made = make_folders(path.parent)
    try:
        write_with(path, write)
    except BaseException:
        for folder in reversed(made):
            remove_path(folder)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    write_with(path, lambda handle: handle.write(data))


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a new temporary file, fsync and an atomic rename."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(table: pa.Table, path: Path, **options: Any) -> None:
    """Write a Parquet file through a new temporary file, fsync and an atomic rename (``options``:
    ``pyarrow.parquet.write_table``'s)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    write_bytes(path, sink.getvalue().to_pybytes())


# -- folders -----------------------------------------------------------------------------------
def make_folders(path: Path) -> list[Path]:
    """``mkdir -p path`` that says which folders this call made (outermost first).

    A folder that another process makes at the same moment counts as existing, not as made.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    made = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
            made.append(folder)
        except FileExistsError:
            if not folder.is_dir():
                raise
    return made


def make_dir_exclusive(path: str | Path) -> None:
    """Make the folder ``path``; FileExistsError if anything, a symbolic link included, is there."""
    os.mkdir(path, 0o755)


def is_real_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder itself, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_until_quiet(find: Callable[[], list[Path]], quiet: float = 0.5, limit: float = 10.0) -> None:
    """Delete what ``find()`` lists, again and again, until it lists nothing for ``quiet`` seconds.

    For the debris of writers that outlive their failure: after a save fails on a full disk,
    Orbax's TensorStore writes still in flight go on and make their folders again, so a folder
    deleted once can come back a moment later. Gives up after ``limit`` seconds.
    """
    start = last_seen = time.monotonic()
    while True:
        found = find()
        for path in found:
            remove_path(path)
        now = time.monotonic()
        if found:
            last_seen = now
        if now - last_seen >= quiet or now - start >= limit:
            return
        time.sleep(0.05)


def remove_path(path: str | Path, ignore_errors: bool = True) -> None:
    """Delete a file, a symlink or a whole folder (never following a symlink); missing is fine.

    ``ignore_errors``: what cannot be deleted inside a folder is left behind; else OSError.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:  # a folder made there since the lstat
        if not ignore_errors:
            raise
