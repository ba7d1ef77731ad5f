"""Progress on standard error: step, loss, steps/s and the latest evaluation.

In a terminal, a rich bar. Elsewhere (a log file, a pipe, a CI job) a bar cannot redraw and is cut
to 80 columns, so plain lines are written instead, one every ``PIPELINE_PROGRESS_SECONDS`` (default
10; 0: every update) and one at the end:

    step 1200/3000  loss 0.1234  4,023 steps/s  val/accuracy 0.97

A sweep counts member-steps: ``done`` starts at the work a resumed sweep had already done, so the
count and the total include it alike (``sweep_work``), and the count never shows more than the total.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from pipeline.config import ConfigError

SECONDS_ENV = "PIPELINE_PROGRESS_SECONDS"
DEFAULT_SECONDS = 10.0


def line_seconds() -> float:
    """Seconds between plain lines, from ``PIPELINE_PROGRESS_SECONDS``."""
    raw = os.environ.get(SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise ConfigError(f"bad value for {SECONDS_ENV}: {raw!r} (seconds between progress lines, a number >= 0)")
    return value


def sweep_work(trials: Iterable[tuple[int, int, bool]]) -> tuple[int, int]:
    """``(total, done)`` member-steps of a sweep's trials, each ``(planned steps, steps done, finished)``:
    a finished trial counts the steps it ran (a stopped one ran fewer than planned), an unfinished
    one its plan; the steps done before a resume count on both sides."""
    total = done = 0
    for planned, ran, finished in trials:
        total += ran if finished else planned
        done += min(ran, planned)
    return total, done


def evaluation_text(evals: dict[str, dict[str, float]]) -> str:
    """The latest evaluation in a few words: each split's first metric other than the loss."""
    shown = []
    for split in ("val", "test"):
        metrics = evals.get(split) or {}
        name = next((n for n in metrics if n != "loss"), "loss" if "loss" in metrics else None)
        if name is not None:
            shown.append(f"{split}/{name} {metrics[name]:.4g}")
    return "  ".join(shown)


class Progress:
    def __init__(self, total: int, enabled: bool = True, done: int = 0):
        self.total, self.enabled = total, enabled
        self.every = line_seconds() if enabled else DEFAULT_SECONDS
        self._bar: Any = None  # rich's Progress, imported only when the bar is shown
        self._task = None
        self._plain = False
        self._start = time.time()
        self._first: tuple[int, float] | None = None  # the count and time of the first update: the rate's origin
        self._step, self._loss = min(done, total), math.nan
        self._eval = ""
        self._printed_at, self._printed = 0.0, (None, "")  # when, and the (count, evaluation) it showed

    def __enter__(self) -> Progress:
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self._step, info="")
        self._plain = self.enabled and self._bar is None
        self._start = self._printed_at = time.time()
        return self

    def update(self, step: int, loss: float) -> None:
        """The count is now ``step`` (steps of a run, member-steps of a sweep), the last loss ``loss``."""
        self._step, self._loss = min(step, self.total), loss
        if self._first is None:
            self._first = (self._step, time.time())
        self._show()

    def note(self, step: int, evals: dict[str, dict[str, float]]) -> None:
        """An evaluation at ``step`` (``{split: {metric: value}}``): shown from now on, at once."""
        self._eval = evaluation_text(evals)
        self._show()

    def info(self) -> str:
        first, since = self._first or (self._step, time.time())
        rate = (self._step - first) / max(time.time() - since, 1e-9)
        loss = "-" if math.isnan(self._loss) else f"{self._loss:.4f}"
        return "  ".join(p for p in (f"loss {loss}", f"{rate:,.0f} steps/s", self._eval) if p)

    def _show(self, final: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self._step, info=self.info())
        elif self._plain and (final or time.time() - self._printed_at >= self.every):
            if final and self._printed == (self._step, self._eval):
                return  # the last line already said where it ended
            print(f"step {self._step}/{self.total}  {self.info()}", file=sys.stderr, flush=True)
            self._printed_at, self._printed = time.time(), (self._step, self._eval)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self._plain and exc[0] is None and self._first is not None:
            self._show(final=True)
