"""A run is a folder: config.json, metrics.parquet/, summary.json, checkpoints/, plots.

This module holds the few file-system rules every record of the pipeline follows:

* New run and sweep folders are made with ``os.mkdir`` (never ``exist_ok``) under a unique
  name: two processes started in the same second get two folders.
* The process that owns a folder holds ``fcntl.flock`` on ``FOLDER/.lock`` (one JSON line:
  pid, host, start time) for as long as it runs; another process is refused naming that pid.
* Every small file is written through a new, uniquely named temporary file opened with
  ``O_CREAT | O_EXCL`` (a planted symlink is never followed), fsynced, renamed over the
  target and committed with an fsync of the folder (``write_bytes``, ``write_json``,
  ``write_parquet``).
* A folder is replaced as a whole by an atomic exchange (``renameat2(RENAME_EXCHANGE)``), or
  where the file system has none, by two renames that ``recover_folder`` rolls back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

LOCK_FILE = ".lock"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class CorruptFile(PipelineError):
    """A record the pipeline wrote that cannot be read back: one line naming the file."""


class FolderLocked(PipelineError):
    """A run or sweep folder in use by another process."""


def default_runs_root() -> Path:
    return Path(os.environ.get("PIPELINE_RUNS", "runs"))


# -- folders ----------------------------------------------------------------------------------
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


def new_run_dir(root: Path, experiment: str, made: list[Path] | None = None) -> Path:
    """Make a new folder ``ROOT/EXPERIMENT-YYYYmmdd-HHMMSS[-N]`` exclusively and return it.

    The name is claimed by ``os.mkdir`` itself: a process that loses the race for a name
    (another run started in the same second) takes the next suffix. ``made`` collects the
    folders this call created (the root too, when it was missing).
    """
    root = Path(root)
    created = make_folders(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{experiment}-{stamp}"
    for n in itertools.count(1):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        if made is not None:
            made.extend(created + [path])
        return path
    raise AssertionError("unreachable")


def remove_if_unused(folders: list[Path]) -> None:
    """Remove the folders a failed command made, innermost first, while they hold nothing but a lock file."""
    for folder in reversed(folders):
        try:
            entries = os.listdir(folder)
        except OSError:
            return
        if any(e != LOCK_FILE for e in entries):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / LOCK_FILE)
        try:
            os.rmdir(folder)
        except OSError:
            return


def fsync_dir(folder: Path) -> None:
    """Commit the entries of ``folder`` (a rename or an unlink in it) to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    except OSError:  # a platform whose folders cannot be opened: nothing to commit
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# -- files ------------------------------------------------------------------------------------
def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path``: ``.NAME.PID.RANDOM.tmp`` (readers and globs skip it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _create_exclusive(path: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = temporary_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o666)
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    write_with(path, lambda handle: handle.write(data))


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a new temporary file, fsync and an atomic rename."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a Parquet file through a new temporary file, fsync and an atomic rename."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(path, sink.getvalue().to_pybytes())


def read_json(path: Path) -> Any:
    """The JSON a record holds; a damaged file is one line naming it (CorruptFile)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return json.loads(data.decode())
    except UnicodeDecodeError:
        raise CorruptFile(f"{path}: damaged record (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"{path}: damaged record (not JSON: {exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None


def read_json_object(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``read_json`` of a file that must hold an object with the ``required`` keys."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise CorruptFile(f"{path}: damaged record (a JSON {type(data).__name__}, not an object)")
    missing = [k for k in required if k not in data]
    if missing:
        raise CorruptFile(f"{path}: damaged record (no {', '.join(repr(k) for k in missing)})")
    return data


def read_parquet(path: Path, **kwargs: Any) -> pa.Table:
    """A Parquet file or dataset folder; a damaged one is one line naming it (CorruptFile).

    Errors of the file system itself (missing, no permission, I/O) stay ``OSError``.
    """
    try:
        return pq.read_table(path, **kwargs)
    except OSError as exc:
        if exc.errno is not None or not isinstance(exc, pa.ArrowException):
            raise
        raise CorruptFile(f"{path}: damaged Parquet ({_first_line(exc)})") from None
    except pa.ArrowException as exc:
        raise CorruptFile(f"{path}: damaged Parquet ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    # pyarrow names the file it could not open; the message already does.
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", first)


def read_parquet_files(files: list[Path], schema: pa.Schema | None = None) -> pa.Table:
    """The files of a Parquet dataset folder as one table, in the order given, each read on its own
    (a damaged one is named; tables of older schemas are promoted to the newest)."""
    tables = []
    for f in files:
        table = read_parquet(f)
        if schema is not None and table.schema != schema:
            try:
                table = table.select(schema.names).cast(schema)
            except (KeyError, pa.ArrowException) as exc:
                raise CorruptFile(f"{f}: damaged Parquet (columns {table.schema.names}, not {schema.names}: "
                                  f"{_first_line(exc)})") from None
        tables.append(table)
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def parquet_files(folder: Path) -> list[Path]:
    """The data files of a Parquet dataset folder as pyarrow reads them: sorted, hidden (``.``/``_``) skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return [folder] if folder.is_file() else []
    return sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_")) and p.is_file())


# -- replacing a folder as a whole --------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None
if sys.platform.startswith("linux"):
    try:
        _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # an old C library
        _renameat2 = None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot (then nothing moved)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def new_folder_beside(path: Path, kind: str = "new") -> Path:
    """A fresh hidden folder beside ``path`` (``.NAME.KIND-RANDOM``), made exclusively."""
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{kind}-{secrets.token_hex(6)}")
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


def replace_folder(new: Path, path: Path) -> None:
    """Put the complete folder ``new`` in place of ``path`` (made or replaced) and delete the old one.

    With an atomic exchange a reader sees the old folder or the new one, never neither.
    Without one the old folder is first renamed aside (``.NAME.old-RANDOM``): a kill between
    the two renames leaves no ``path``, and ``recover_folder`` puts the old one back.
    """
    if not os.path.lexists(path):
        os.rename(new, path)
    elif exchange(new, path):
        remove_path(new)  # now the old folder (or a file it replaced)
    else:
        old = new_folder_beside(path, "old")
        os.rmdir(old)
        os.rename(path, old)
        os.rename(new, path)
        remove_path(old)
    fsync_dir(Path(path).parent)


def remove_path(path: Path) -> None:
    """Delete a file, a symlink or a whole folder (never following a symlink); missing is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(path)


def leftovers(path: Path) -> list[Path]:
    """Temporary folders and files of ``path`` (``.NAME.*``) that a killed writer left beside it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def recover_folder(path: Path) -> None:
    """Undo a ``replace_folder`` that was killed halfway, and delete what killed writers left.

    Only the process that owns the enclosing run or sweep folder (its lock) may call this.
    """
    path = Path(path)
    if not os.path.lexists(path):
        olds = [p for p in leftovers(path) if p.name.startswith(f".{path.name}.old-")]
        if olds:
            os.rename(olds[0], path)
    for p in leftovers(path):
        remove_path(p)


# -- the lock of a run or sweep folder -----------------------------------------------------------
class _Held:
    def __init__(self, fd: int):
        self.fd, self.pins, self.sticky = fd, 0, False


_HELD: dict[str, _Held] = {}
_STICKY_LIMIT = 64  # folders locked by library calls (no `with`) stay locked; at most this many


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _holder_text(fd: int) -> str:
    for _ in range(20):  # the holder writes its line right after taking the lock
        raw = os.pread(fd, 4096, 0)
        if raw.strip():
            try:
                info = json.loads(raw.decode())
                return f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {info.get('since', '?')})"
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                break
        time.sleep(0.05)
    return "another process (pid unknown)"


def _acquire(folder: Path, what: str) -> int:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: the folder is not guarded
        return -1
    path = Path(folder) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW | _O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_text(fd)
        os.close(fd)
        option = "--sweep-dir" if what.startswith("sweep") else "--run-dir"
        raise FolderLocked(f"{what} {folder} is in use by {holder}; wait for it to finish "
                           f"or use another {option}") from None
    except BaseException:
        os.close(fd)
        raise
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:1] + sys.argv[1:3]})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (line + "\n").encode(), 0)
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
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
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
