"""Ctrl-C (SIGINT) and SIGTERM as a flag that the training and sweep loops check between calls.

Inside ``sigint_flag()`` either signal only sets the flag: the loop finishes the call in
flight, saves a checkpoint and raises its ``Interrupted`` error ("interrupted at step N ...
resume with ..."). The command line exits with 130 after SIGINT and 143 after SIGTERM
(128 + the signal's number, as a shell reports a process the signal stopped).

Outside such a loop, ``terminate_as_interrupt()`` (installed by ``pipeline.cli.main``)
turns SIGTERM into ``Terminated``, a ``KeyboardInterrupt``: the code that handles Ctrl-C
(temporary files removed, locks dropped) handles a polite kill the same way.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_last: list[int] = []  # the last signal a flag caught in this process


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a loop that saves: unwinds like Ctrl-C."""


def last_signal() -> int | None:
    """The signal that most recently set a flag (or raised ``Terminated``) in this process."""
    return _last[-1] if _last else None


def interrupted_exit_code() -> int:
    """The exit status of a run stopped by a signal: 143 after SIGTERM, else 130."""
    return EXIT_CODES.get(last_signal(), 130)


def forget() -> None:
    """Clear the record of the last signal (each command starts without one)."""
    _last.clear()


@contextlib.contextmanager
def sigint_flag(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[dict]:
    """SIGINT and SIGTERM set ``flag["set"]`` (and ``flag["signal"]``), so the loop can save and stop cleanly.

    Outside the main thread (where handlers cannot be installed) signals are left alone.
    """
    flag = {"set": False, "signal": None}

    def handler(signum, frame):
        flag["set"] = True
        flag["signal"] = signum
        _last.append(signum)
        del _last[:-1]

    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the signals alone
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        yield flag
        return
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (a KeyboardInterrupt) instead of killing outright."""

    def handler(signum, frame):
        _last.append(signum)
        del _last[:-1]
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
