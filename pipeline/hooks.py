"""Hooks: code of yours that the loop calls on the host between compiled calls, never inside them.

A hook subclasses ``Hook`` and overrides what it needs. They cost nothing per step: the loop
calls them with what it already has on the host (the train metrics of a call are the ones it
read back anyway). Pass them to ``pipeline.fit(..., hooks=[...])`` or return them from an
experiment file's ``hooks()``. Trackers (``log=tensorboard,wandb,mlflow``) are hooks too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError


@dataclass
class RunInfo:
    run_dir: Path
    experiment: str
    config: dict[str, Any]  # the resolved config as in config.json
    total_steps: int
    first_step: int  # > 0 when the run resumed
    # A sweep's trial (None for a run of its own): trackers group the trials of one sweep by its folder.
    sweep_dir: Path | None = None  # the sweep folder
    trial: int | None = None  # the trial's id (its row of trials.parquet)
    swept: dict[str, Any] | None = None  # the trial's values of the swept keys, by dotted key


class Hook:
    def on_start(self, run: RunInfo) -> None:
        """Before the first call (after a resume has restored the state)."""

    def after_call(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        """The train metrics of one compiled call: ``steps`` (K,) and each metric (K,), on the host."""

    def on_eval(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        """An evaluation: ``{split: {metric: value}}`` (``val`` when there is one, ``test``)."""

    def on_checkpoint(self, step: int, best: bool) -> None:
        """A checkpoint was handed to Orbax (written asynchronously)."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """After ``summary.json`` is written (also after early stopping; not after a crash)."""

    def close(self) -> None:
        """Always called last, also when the run fails or is interrupted."""


class HookFailed(PipelineError):
    """A hook raised: one line naming its class and the file it is defined in.

    The training loop stops at the call boundary where it sees one, after a checkpoint of the
    state it had reached, so the run resumes from there (``pipeline.train.engine``).
    """


def _source(hook: Hook) -> str:
    """The file that defines the hook's class (its module's name where there is no file)."""
    cls = type(hook)
    try:
        return inspect.getfile(cls)
    except (TypeError, OSError):  # defined in a notebook or at a prompt
        return cls.__module__


def _ours(path: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(__file__).resolve().parent)
    except (OSError, ValueError):
        return False


def hook_failed(hook: Hook, event: str, exc: Exception) -> HookFailed:
    """The one line of a hook's exception. The pipeline's own hooks (trackers) raise ``PipelineError``
    lines of their own, which stay as they are; anything else is named by the hook's class and file."""
    if isinstance(exc, HookFailed):  # from a composite inside this one: already named
        return exc
    where = _source(hook)
    if isinstance(exc, PipelineError) and _ours(where):
        failed = HookFailed(str(exc))
        failed.exit_code = exc.exit_code
    else:
        text = str(exc).strip()
        what = text.splitlines()[0] if text else ""
        if not isinstance(exc, PipelineError):
            what = f"{type(exc).__name__}: {what}" if what else type(exc).__name__
        name = type(hook).__qualname__.rsplit("<locals>.", 1)[-1]  # a class defined in a function: its own name
        failed = HookFailed(f"{where}: hook {name} failed in {event}: {what}")
    failed.__cause__ = exc  # the traceback behind it, with --debug
    return failed


class Hooks(Hook):
    """Several hooks called in order.

    A hook that raises does not keep the others from the event: each is called, and the call then
    raises one ``HookFailed`` naming the first that failed. A hook that failed is not called again,
    except for ``close``, which every hook gets (a failed hook's second failure there is not reported).
    """

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)
        self.failed: set[int] = set()  # positions of the hooks that raised

    def _each(self, event: str, *args: Any) -> None:
        first: HookFailed | None = None
        for i, hook in enumerate(self.hooks):
            if i in self.failed and event != "close":
                continue
            try:
                getattr(hook, event)(*args)
            except Exception as exc:  # any exception of user code becomes the one line
                if i in self.failed:  # its close after an earlier failure: that one is what was reported
                    continue
                self.failed.add(i)
                first = first or hook_failed(hook, event, exc)
        if first is not None:
            raise first

    def on_start(self, run: RunInfo) -> None:
        self._each("on_start", run)

    def after_call(self, steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        self._each("after_call", steps, metrics)

    def on_eval(self, step: int, metrics: dict[str, dict[str, float]]) -> None:
        self._each("on_eval", step, metrics)

    def on_checkpoint(self, step: int, best: bool) -> None:
        self._each("on_checkpoint", step, best)

    def on_end(self, summary: dict[str, Any]) -> None:
        self._each("on_end", summary)

    def close(self) -> None:
        self._each("close")
