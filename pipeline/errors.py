"""The one exception type the command line turns into a one-line message, and the line of an OSError."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar


class PipelineError(Exception):
    """A user-facing error: its message is printed as one line, without a traceback."""

    exit_code = 2


class PathError(PipelineError):
    """An operating-system error on a path (missing, no permission, read-only, not a folder, disk full).

    Its message is ``os_error_line`` of the ``OSError``: the line the command line prints for it.
    """

    @classmethod
    def of(cls, exc: OSError) -> PathError:
        return cls(os_error_line(exc))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def typed_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception (its type's name alone when it has no message): how a
    failure of a user's code is quoted inside the line that names the file at fault."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an OSError (both paths of a failed rename)."""
    reason = exc.strerror or first_line(exc)
    if exc.filename is None:
        return reason
    if getattr(exc, "filename2", None) is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}"


F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(function: F) -> F:
    """``function`` raising ``PipelineError`` only: an ``OSError`` becomes a ``PathError`` whose message is
    the command line's one line for it (``PATH: reason``); the ``OSError`` stays its ``__cause__``."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except OSError as exc:
            raise PathError.of(exc) from exc

    return call  # type: ignore[return-value]
