"""Orbax checkpoints of a run or a sweep population: the train state and the engine's position.

A run's ``checkpoints/`` keeps the last K and ``checkpoints/best/`` the one with the best
evaluation metric; a population's ``checkpoints/gG-cC/`` keeps its last (the members' states
stacked). Each checkpoint holds the state pytree and a JSON ``meta`` item (step, data reader
position, every member's bookkeeping), so a resume continues exactly where it stopped.
Saves are asynchronous: Orbax writes from a host copy on
a background thread while training goes on, and a save waits only for the one before it
(Orbax commits each through a temporary folder and a rename, so a kill mid-write leaves the
previous checkpoint as it was). Orbax is imported on first use: a run that never saves
never pays for it.

Several processes: the state's arrays span processes, so no process can copy it whole to its
host; Orbax saves the sharded ``jax.Array``s as they are (each process writes its own shards,
process 0 the metadata and the meta item) and every process calls every save, restore and
delete. Each manager synchronises under a barrier prefix of its own. A resume restores straight
onto the run's shardings (``onto``), whatever mesh the checkpoint was saved from: the saved
arrays are whole arrays, not per-device pieces.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from pipeline.errors import PipelineError
from pipeline.train.evaluation import Bookkeeping

# Written into every checkpoint's meta (format 1 has none). 3: the optimizer state holds no step
# counter of its own, and hyperparameter switches that are off are not in it.
FORMAT = 3


class CannotResume(PipelineError):
    """A checkpoint that holds a different train state (an earlier version, another model)."""


def _ocp():
    import orbax.checkpoint as ocp

    # Orbax logs every save at INFO; a run's own progress bar says enough.
    logging.getLogger("absl").setLevel(logging.WARNING)
    return ocp


def barrier_prefix(directory: Path, role: str) -> str:
    """The barrier prefix of one manager: its role and folder, the same on every process (the folder's
    path is process 0's, shared), different for every manager that may be open at once."""
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:12]
    return f"pipeline-{role}-{digest}"


def _manager(directory: Path, keep: int, role: str):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=barrier_prefix(directory, role)))
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory.resolve(), options=options, item_handlers=handlers)


def several_processes() -> bool:
    return jax.process_count() > 1


def host_copy(state: Any) -> Any:
    """What a save writes from: the state on the host, since the device buffers are donated to the
    next step while Orbax writes. Several processes: the arrays themselves (no process holds them
    whole; Orbax copies each process's shards to its host before the save returns)."""
    return state if several_processes() else jax.device_get(state)


def keep_copy(state: Any) -> Any:
    """A copy of ``state`` that outlives the next step (which donates the state's buffers): on the
    host in one process, on the devices (same shardings) in several."""
    if not several_processes():
        return jax.device_get(state)
    return _device_copy(state)


@jax.jit
def _device_copy(tree: Any) -> Any:
    """A copy on the devices, each leaf where it was (compiled once per state layout)."""
    import jax.numpy as jnp

    return jax.tree.map(jnp.copy, tree)


def abstract(like: Any, onto: Any) -> Any:
    """Restore targets: ``like``'s shapes and dtypes on the shardings ``onto``."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), like, onto)


def _path_names(path: tuple) -> tuple[str, ...]:
    """A pytree path as plain names: a dataclass field, a dict key and a list index read alike."""
    return tuple(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path)


def _layout(tree: Any) -> dict[tuple[str, ...], tuple]:
    return {_path_names(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
    """The Orbax managers of one checkpoint folder: the latest K, and the best one."""

    def __init__(self, directory: Path, keep: int):
        self.directory, self.keep = Path(directory), keep
        self._latest = self._best = None

    @property
    def latest(self):
        if self._latest is None:
            self._latest = _manager(self.directory, self.keep, "latest")
        return self._latest

    @property
    def best(self):
        if self._best is None:
            self._best = _manager(self.directory / "best", 1, "best")
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
        return ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                  meta=ocp.args.JsonSave({**meta, "format": FORMAT}))

    def restore_latest(self, like_state: Any | Callable[[dict], Any], onto: Any = None) -> tuple[Any, dict] | None:
        """The newest readable checkpoint, shaped like ``like_state`` (or ``like_state(meta)``, for a
        population whose size its meta says); a corrupt one is skipped with a note on stderr.

        ``onto`` (shardings, a tree like the state): the state is restored as ``jax.Array``s
        straight onto them, whatever mesh it was saved from; else as host arrays. A checkpoint
        that holds a *different* state (an older format, or another model) is not
        corrupt: it raises ``CannotResume`` and nothing on disk changes. Several processes: all
        call it; a checkpoint is used only when every process could read it.
        """
        from pipeline import distributed

        ocp = _ocp()
        self.latest.reload()
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                meta = dict(self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                like = like_state(meta) if callable(like_state) else like_state
                like = jax.device_get(like) if onto is None else abstract(like, onto)
                self._check_layout(step, like, meta)
                restored = self.latest.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
            except CannotResume:
                raise
            except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: fall back
                restored = exc
            if not distributed.all_true(f"restore-{step}", not isinstance(restored, Exception)):
                print(f"warning: checkpoint at step {step} is unreadable"
                      f"{f' ({type(restored).__name__})' if isinstance(restored, Exception) else ' by another process'}"
                      "; falling back to the previous one", file=sys.stderr)
                continue
            self._forget_after(step)
            return restored["state"], dict(restored["meta"])
        self._forget_after(-1)
        return None

    def _check_layout(self, step: int, like: Any, meta: dict) -> None:
        saved = _layout(self.latest.item_metadata(step)["state"].tree)
        wanted = _layout(like)
        if saved == wanted:
            return
        where = self.directory / str(step)
        if meta.get("format") is None:
            raise CannotResume(f"{where}: written by the first build of the pipeline, whose train state differs "
                               "from this version's; it cannot be resumed: train into a new --run-dir")
        if meta["format"] < FORMAT:
            raise CannotResume(f"{where}: written by an earlier version of the pipeline (checkpoint format "
                               f"{meta['format']}, now {FORMAT}) whose train state differs from this version's; it "
                               "cannot be resumed: train into a new --run-dir")
        differ = sorted(set(wanted) ^ set(saved)) or sorted(k for k in wanted if saved[k] != wanted[k])
        raise CannotResume(f"{where}: holds a different train state (first difference at "
                           f"'{'.'.join(differ[0])}'): was the model or optimizer changed? it cannot be resumed")

    def read(self, like_state: Any | Callable[[dict], Any], best: bool = False) -> tuple[Any, dict] | None:
        """The newest checkpoint (of the best ones when ``best``), changing nothing on disk."""
        ocp = _ocp()
        manager = self.best if best else self.latest
        manager.reload()
        step = manager.latest_step()
        if step is None:
            return None
        meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        like = jax.device_get(like_state(meta) if callable(like_state) else like_state)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(like), meta=ocp.args.JsonRestore()))
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


def checkpoint_meta(step: int, wall_s: float, members: list[int], slots: list[int | None], live: Any,
                    books: dict[int, Bookkeeping], **extra: Any) -> dict:
    """A checkpoint's ``meta`` item: where the engine stands and every member's bookkeeping.

    ``members`` are the trials the population started with, ``slots`` the trial in each slot now
    (None: padding; successive halving repacks them) and ``live`` which slots still train.
    """
    return {"step": int(step), "wall_s": float(wall_s), "members": list(members), "slots": list(slots),
            "live": [bool(v) for v in live], "records": {str(t): books[t].to_json() for t in members}, **extra}


def books_from_meta(meta: dict) -> dict[int, Bookkeeping]:
    """Every member's bookkeeping in a checkpoint's meta (a format-1 run's meta held one, flat)."""
    if "records" not in meta:
        return {0: Bookkeeping.from_json(meta)}
    return {int(t): Bookkeeping.from_json(rec) for t, rec in meta["records"].items()}
