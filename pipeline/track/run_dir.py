"""A run is a folder: config.json, metrics.parquet/, summary.json, checkpoints/, plots.

New run and sweep folders are made with ``os.mkdir`` (never ``exist_ok``) under a unique name
``ROOT/EXPERIMENT-YYYYmmdd-HHMMSS[-N]``: two processes started in the same second get two
folders. The files in them are written, read and locked with ``pipeline.durable``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path

from pipeline.durable.files import make_folders
from pipeline.durable.locks import LOCK_FILE


def default_runs_root() -> Path:
    return Path(os.environ.get("PIPELINE_RUNS", "runs"))


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
