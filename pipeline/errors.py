"""The one exception type the command line turns into a one-line message."""


class PipelineError(Exception):
    """A user-facing error: its message is printed as one line, without a traceback."""

    exit_code = 2
