"""Orbax checkpoints of a run: the train state and the loop's position, saved together.

``checkpoints/`` keeps the last K; ``checkpoints/best/`` keeps the one with the best
evaluation metric. Each checkpoint holds the state pytree and a JSON ``meta`` item (step,
data reader position, best-so-far and early-stopping bookkeeping), so a resumed run
continues exactly where it stopped. Saves are asynchronous: Orbax writes from a host copy on
a background thread while training goes on, and a save waits only for the one before it
(Orbax commits each through a temporary folder and a rename, so a kill mid-write leaves the
previous checkpoint as it was). Orbax is imported on first use: a run that never saves
never pays for it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import jax


def _ocp():
    import orbax.checkpoint as ocp

    # Orbax logs every save at INFO; a run's own progress bar says enough.
    logging.getLogger("absl").setLevel(logging.WARNING)
    return ocp


def _manager(directory: Path, keep: int):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(directory.resolve(), options=options, item_names=("state", "meta"))


def host_copy(state: Any) -> Any:
    """The state on the host: the device buffers are donated to the next step while Orbax writes."""
    return jax.device_get(state)


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int):
        self.run_dir, self.keep = run_dir, keep
        self._latest = self._best = None

    @property
    def latest(self):
        if self._latest is None:
            self._latest = _manager(self.run_dir / "checkpoints", self.keep)
        return self._latest

    @property
    def best(self):
        if self._best is None:
            self._best = _manager(self.run_dir / "checkpoints" / "best", 1)
        return self._best

    def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
        """The latest checkpoint (and the best, when this step is it), written in the background."""
        host_state = host_copy(state)
        self.latest.save(step, args=self._args(host_state, meta), force=True)
        if best:
            self.save_best(step, host_state, meta)

    def save_best(self, step: int, host_state: Any, meta: dict) -> None:
        self.best.save(step, args=self._args(host_state, meta), force=True)

    @staticmethod
    def _args(host_state: Any, meta: dict):
        ocp = _ocp()
        return ocp.args.Composite(state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta))

    def restore_latest(self, like_state: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint; a corrupt one is skipped with a note on stderr."""
        ocp = _ocp()
        self.latest.reload()
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self.latest.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(jax.device_get(like_state)), meta=ocp.args.JsonRestore()))
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: fall back
                print(f"warning: checkpoint at step {step} is unreadable ({type(exc).__name__}); "
                      "falling back to the previous one", file=sys.stderr)
                continue
            self._forget_after(step)
            return restored["state"], dict(restored["meta"])
        self._forget_after(-1)
        return None

    def read(self, like_state: Any, best: bool = False) -> tuple[Any, dict] | None:
        """The newest checkpoint (of the best ones when ``best``), changing nothing on disk."""
        ocp = _ocp()
        manager = self.best if best else self.latest
        manager.reload()
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.device_get(like_state)), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def _forget_after(self, step: int) -> None:
        """Delete checkpoints newer than the one resumed from: the run will write them again."""
        for manager in (self.latest, self.best):
            manager.reload()
            for newer in [s for s in manager.all_steps() if s > step]:
                manager.delete(newer)

    def wait(self) -> None:
        for manager in (self._latest, self._best):
            if manager is not None:
                manager.wait_until_finished()

    def close(self) -> None:
        for manager in (self._latest, self._best):
            if manager is not None:
                manager.close()
