"""Renames that never lose a target: ``renameat2`` with ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``.

``rename_noreplace`` refuses an existing target whatever it is. ``exchange`` swaps two existing
paths in one step, so a reader finds the old one or the new one, never neither. Where the C
library, the kernel or the file system lacks the call or the flag, ``rename_noreplace`` checks
the target and renames (safe among writers that hold one lock) and ``exchange`` says False,
having moved nothing; the caller then moves the old path aside first.

``replace_folder`` puts a complete folder in place of another with the exchange, or with two
renames that ``recover_folder`` rolls back when a kill falls between them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import sys
from pathlib import Path

from pipeline.durable.files import fsync_dir, remove_path

EXCHANGE = True  # tests set it False to exercise the paths that move the old folder aside

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
# The call or the flag is missing here: fall back (rename_noreplace) or report False (exchange).
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
# File systems that refuse an exchange outright (across mounts, some FUSE and network ones).
_NO_EXCHANGE = _UNSUPPORTED | {errno.EXDEV, errno.EPERM}


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # an old C library
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def _rename2(source: str | Path, target: str | Path, flags: int, unsupported: frozenset[int]) -> bool:
    """renameat2; False where it is unavailable or fails with an ``unsupported`` code, else OSError."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in unsupported:
        return False
    raise OSError(code, os.strerror(code), os.fspath(target))


def rename_noreplace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` to ``target``; FileExistsError if ``target`` exists, whatever it is."""
    if _rename2(source, target, _RENAME_NOREPLACE, _UNSUPPORTED):
        return
    if os.path.lexists(target):  # no renameat2: the caller's lock makes check-then-rename safe among writers
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(target))
    os.rename(source, target)


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot (then nothing moved)."""
    return EXCHANGE and _rename2(a, b, _RENAME_EXCHANGE, _NO_EXCHANGE)


# -- replacing a folder as a whole --------------------------------------------------------------
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
