"""A rich progress bar on standard error: step, loss, steps/s and the latest evaluation."""

from __future__ import annotations

import time
from typing import Any


class Progress:
    def __init__(self, total: int, enabled: bool = True):
        self.total = total
        self.enabled = enabled
        self._bar: Any = None  # rich's Progress, imported only when the bar is shown
        self._task = None
        self._start = time.time()
        self._eval = ""

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, info="")
        self._start = time.time()
        return self

    def update(self, step: int, loss: float) -> None:
        if self._bar is None:
            return
        rate = step / max(time.time() - self._start, 1e-9)
        self._bar.update(self._task, completed=step, info=f"loss {loss:.4f}  {rate:,.0f} steps/s{self._eval}")

    def note(self, step: int, test: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in list(test.items())[:2])
        self._eval = f"  test: {shown}"

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
