"""Optuna's file journal, with its appends held and written together (``hold``).

Optuna writes every change of a study (a trial created, a parameter, a reported value, a result)
as one line appended to ``study.journal``, each behind a lock and an fsync: a round of 8 asked
trials is 48 of them, an evaluation of 8 members 8 more. Inside ``hold`` the lines are kept in
memory and the study reads them back from there (it replays its own writes to learn a new
trial's id), and they reach the file in one append and one fsync when the hold ends.

A hold is all or nothing on disk: a process killed inside one leaves none of its lines, as if it
had been killed before the hold began. One process writes a sweep's journal at a time (the sweep
folder is locked), so the file does not change under a hold.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def held_journal(optuna: Any, path: Path) -> Any:
    """The journal backend of the study file ``path`` (a ``BaseJournalBackend`` with ``hold``)."""

    class HeldJournal(optuna.storages.journal.BaseJournalBackend):
        def __init__(self) -> None:
            self.file = optuna.storages.journal.JournalFileBackend(str(path))
            self.held: list[dict[str, Any]] | None = None
            self.on_file = 0  # lines in the file, as far as read

        def _catch_up(self) -> None:
            """Count the file's lines from the last one counted (the backend keeps each line's offset)."""
            for _ in self.file.read_logs(self.on_file):
                self.on_file += 1

        def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
            if self.held is None:
                return self.file.read_logs(log_number_from)
            on_file = self.file.read_logs(log_number_from) if log_number_from < self.on_file else ()
            return itertools.chain(on_file, self.held[max(0, log_number_from - self.on_file):])

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            if self.held is None:
                self.file.append_logs(logs)
            else:
                self.held.extend(logs)

        @contextmanager
        def hold(self) -> Iterator[None]:
            if self.held is not None:  # already holding: the outer hold writes
                yield
                return
            self._catch_up()
            self.held = []
            try:
                yield
            finally:
                held, self.held = self.held, None
                if held:  # what the study has already applied: written even when the block failed
                    self.file.append_logs(held)
                self._catch_up()

    return HeldJournal()
