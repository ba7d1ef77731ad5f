"""SIGTERM handled like Ctrl-C while the store is written: the writer cleans up, then the process exits.

``Terminated`` is a ``KeyboardInterrupt``, so every ``with``/``finally`` that cleans up after
Ctrl-C (the dataset writer deletes its staging folder, the store lock is released) does the same
after ``kill PID``. The command line turns it into one line and exit status 143.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a handler from ``sigterm_as_interrupt`` was installed."""


def _raise(signum, frame) -> None:
    raise Terminated(f"terminated by signal {signum}")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (main thread only; elsewhere a no-op)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is over (a commit is never cut in two by Ctrl-C).

    The Python-level handlers are swapped for one that notes the signal (Python runs handlers in
    the main thread, whichever thread the signal reached); the noted signal is then handed to the
    handler that was there before, or re-sent if that was the default action.
    """
    if not _main_thread():
        yield
        return
    noted: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if noted:
            handler = previous[noted[0]]
            if callable(handler):
                handler(noted[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(noted[0])
