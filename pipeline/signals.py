"""Ctrl-C (SIGINT) and SIGTERM: a flag for the loops that save, an exception elsewhere, a wait for commits.

Inside ``sigint_flag()`` either signal only sets the flag: the training and sweep loops finish
the call in flight, save a checkpoint and raise their ``Interrupted`` error ("interrupted at
step N ... resume with ..."). The command line exits with 130 after SIGINT and 143 after
SIGTERM (128 + the signal's number, as a shell reports a process the signal stopped).

Outside such a loop, ``sigterm_as_interrupt()`` (installed by ``pipeline.cli.main`` and by every
dataset write) turns SIGTERM into ``Terminated``, a ``KeyboardInterrupt``: the code that handles
Ctrl-C (the dataset writer deletes its staging folder, temporary files are removed, locks are
dropped) handles a polite kill the same way. ``deferred_interrupts()`` holds both signals back
while a commit renames, so a commit is never cut in two.

Handlers can only be installed in the main thread; elsewhere each of these is a no-op.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_last: list[int] = []  # the last signal a flag caught, or that raised Terminated, in this process
_unheard: list[int] = []  # a signal a flag caught that no loop acted on (it came after the last boundary)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a loop that saves: unwinds like Ctrl-C."""


def _note(signum: int) -> None:
    _last.append(signum)
    del _last[:-1]


def last_signal() -> int | None:
    """The signal that most recently set a flag (or raised ``Terminated``) in this process."""
    return _last[-1] if _last else None


def interrupted_exit_code() -> int:
    """The exit status of a run stopped by a signal: 143 after SIGTERM, else 130."""
    return EXIT_CODES.get(last_signal(), 130)


def forget() -> None:
    """Clear the record of the last signal (each command starts without one)."""
    _last.clear()
    _unheard.clear()


def raise_unheard() -> None:
    """Raise, now, a signal a flag caught after its loop's last call boundary: the run finished and
    recorded everything, and the signal is delivered as the Python API returns (``KeyboardInterrupt``
    for SIGINT, ``Terminated`` for SIGTERM), so a loop of ``pipeline.fit`` calls (an Optuna
    objective) stops at Ctrl-C instead of going on to the next trial."""
    if _unheard:
        signum = _unheard[-1]
        _unheard.clear()
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def sigint_flag(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[dict]:
    """SIGINT and SIGTERM set ``flag["set"]`` (and ``flag["signal"]``), so the loop can save and stop cleanly.

    Outside the main thread (where handlers cannot be installed) signals are left alone.
    """
    flag = {"set": False, "signal": None}

    def handler(signum, frame):
        flag["set"] = True
        flag["signal"] = signum
        _note(signum)

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
    if flag["set"]:  # the block ended normally with a signal caught: no loop acted on it
        _unheard.append(flag["signal"])


def _raise_terminated(signum, frame) -> None:
    _note(signum)
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (a KeyboardInterrupt) instead of killing outright."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is over (a commit is never cut in two by Ctrl-C).

    The Python-level handlers are swapped for one that notes the signal (Python runs handlers in
    the main thread, whichever thread the signal reached); the noted signal is then handed to the
    handler that was there before, or re-sent if that was the default action.
    """
    if threading.current_thread() is not threading.main_thread():
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
