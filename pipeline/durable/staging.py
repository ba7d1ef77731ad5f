"""Staging folders: a folder tree written beside its final name and renamed into place whole.

A writer makes ``.NAME.tmp-ID`` beside ``NAME`` (``new_folder_beside``: ``mkdir``, so never an
existing folder or link; ID is 12 random hex digits), locks it at once (``FOLDER/.lock``, the
folder lock of ``folder_locks``), writes everything into it, fsyncs the tree and renames it to
``NAME`` with a rename that refuses an existing target. A kill at any moment leaves nothing or
the whole tree under ``NAME``; what it leaves beside it is a staging folder whose lock nobody
holds, which ``collect_abandoned`` recognises and removes.

The store's imports (``pipeline.data.commit``) follow the same pattern under the store's own
lock; this module serves the writers of single run folders (``pipeline sweep export``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from pipeline.durable import locks
from pipeline.durable.files import is_real_dir, remove_path
from pipeline.durable.renames import new_folder_beside

STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{12}$")
# An existing lock file only (never made here), not followed when it is a link, never blocking on a FIFO.
_OPEN_LOCK = (os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
              | getattr(os, "O_NONBLOCK", 0))


def new_staging(path: Path) -> Path:
    """A fresh staging folder ``.NAME.tmp-ID`` beside ``path``, made exclusively."""
    return new_folder_beside(Path(path), "tmp")


def staged_name(folder: Path) -> str | None:
    """The ``NAME`` a staging folder ``.NAME.tmp-ID`` is for; None for any other name."""
    match = STAGING.match(Path(folder).name)
    return match.group("name") if match else None


def collect_abandoned(parent: Path, wanted: Callable[[str], bool]) -> list[Path]:
    """Remove the staging folders in ``parent`` for names ``wanted`` accepts whose writer is gone.

    A staging folder is abandoned when it holds a ``.lock`` that nobody holds: its writer locked
    it right after making it, and the kernel drops that lock when the writer dies, SIGKILL
    included. The lock is taken here before the folder is removed, so a live writer's folder is
    never touched. Links, folders without a lock file (a writer between ``mkdir`` and its lock)
    and any other name are left alone. Returns the folders removed.
    """
    if not locks.available():  # without flock a live writer cannot be told from a dead one
        return []
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        name = staged_name(Path(entry))
        folder = Path(parent) / entry
        if name is None or not wanted(name) or not is_real_dir(folder):
            continue
        try:
            fd = os.open(folder / locks.LOCK_FILE, _OPEN_LOCK)
        except OSError:
            continue
        try:
            locks.lock(fd)
            remove_path(folder)
            removed.append(folder)
        except locks.LockHeld:
            continue  # a live writer
        finally:
            os.close(fd)
    return removed
