"""Orbax checkpoints of a run: the train state and the loop's position, saved together.

``checkpoints/`` keeps the last K (every ``checkpoint_every`` steps and at the end);
``checkpoints/best/`` keeps the one with the best evaluation metric. Each checkpoint holds
the state pytree and a JSON ``meta`` item (step, data reader position, best-so-far and
early-stopping bookkeeping), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# Orbax logs every save at INFO; a run's own progress bar says enough.
logging.getLogger("absl").setLevel(logging.WARNING)


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory.resolve(), options=options, item_names=("state", "meta"))


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int):
        self.latest = _manager(run_dir / "checkpoints", keep)
        self.best = _manager(run_dir / "checkpoints" / "best", 1)

    def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
        # A host copy: the device buffers are donated to the next step while Orbax writes.
        host_state = jax.device_get(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta))
        self.latest.save(step, args=args, force=True)
        if best:
            self.best.save(step, args=args, force=True)

    def restore_latest(self, like_state: Any) -> tuple[Any, dict] | None:
        """The newest readable checkpoint; a corrupt one is skipped with a note on stderr."""
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
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
