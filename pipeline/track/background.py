"""Work that follows a run but need not delay it: plots drawn by a detached process.

The run writes its summary first, then starts ``pipeline runs plot FOLDER`` in its own
session at low priority and returns; the plot is written through a temporary file and a
rename, so a plot killed halfway leaves the folder as it was (``pipeline runs plot`` draws
it again on demand).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

_STARTED: list[subprocess.Popen] = []  # reaped as later ones start: a long-lived process keeps no zombies


def plot_later(folder: Path) -> None:
    """Draw the plots of a run or sweep folder in the background; never raises, never waits."""
    _STARTED[:] = [p for p in _STARTED if p.poll() is None]
    # `nice` rather than a preexec_fn: a Python callback between fork and exec is unsafe in a
    # process whose JAX threads are running (and JAX warns about it).
    nice = shutil.which("nice")
    command = [sys.executable, "-m", "pipeline", "runs", "plot", str(folder)]
    try:
        _STARTED.append(subprocess.Popen(([nice, "-n", "10"] if nice else []) + command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True))
    except OSError:  # no plot is no loss: `pipeline runs plot` draws it on demand
        pass
