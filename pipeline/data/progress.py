"""Progress of a long import on standard error: a rich bar on a terminal, else a plain line now and then.

Plain lines (a log file, a pipe, a test's captured stderr) come at most every ``PLAIN_EVERY``
seconds and only once that long has passed, so a quick import prints nothing but its result.
"""

from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_EVERY = 10.0


class ImportProgress:
    """``advance(n)`` as items are done; a context manager that closes the bar."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.started = self.last = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ImportProgress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"[bold]{self.what}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total, rate="")
        return self

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        rate = f"{self.done / max(now - self.started, 1e-9):,.0f}/s"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=rate)
        elif now - self.last >= PLAIN_EVERY:
            self.last = now
            print(f"{self.what}: {self.done:,}/{self.total:,} ({100 * self.done / max(self.total, 1):.0f}%), {rate}",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
