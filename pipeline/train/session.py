"""A training session: what a run and a sweep's population share around the engine.

A session owns the records of one engine run: its Orbax checkpointer, its metrics writer and
its hooks and trackers (one per member). It opens the data feed its population steps through,
restores where an earlier attempt stopped, holds the stop flag that Ctrl-C and SIGTERM set and
the one line the engine ends with when it is stopped, and closes everything in one place.
``pipeline train`` (``run.py``) and a sweep's population (``pipeline/sweep/population_run.py``)
are two small configurations of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pipeline.data.stream import StreamingReader
from pipeline.durable.files import remove_path
from pipeline.errors import PipelineError
from pipeline.hooks import Hook
from pipeline.track.metrics import MetricsTable
from pipeline.track.profile import Profiler
from pipeline.train.checkpoint import Checkpointer, books_from_meta
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.feeds import Feed, ResidentFeed, SlotFeed, StreamFeed
from pipeline.train.prepare import Prepared


def stop_message(where: str, how_to_go_on: str) -> str:
    """The one line a stopped session ends with: where it stopped, that it is saved, how to go on."""
    return f"interrupted{' ' + where if where else ''}; a checkpoint is saved; {how_to_go_on}"


@dataclass
class Start:
    """Where the engine starts: the step and wall clock, the trial in each slot (None: padding),
    which slots are live, and every member's bookkeeping (shared with the caller, updated in place).
    A refill population (``slots.py``) also says every trial that has taken a slot so far
    (``members``) and the step at which each slot took its trial (``offsets``)."""

    step: int = 0
    wall_s: float = 0.0
    slots: list[int | None] = field(default_factory=lambda: [0])
    live: np.ndarray | None = None
    books: dict[int, Bookkeeping] = field(default_factory=lambda: {0: Bookkeeping()})
    members: list[int] | None = None  # None: the trials in the slots
    offsets: list[int] | None = None  # None: every slot's is 0

    @classmethod
    def from_meta(cls, meta: dict, books: dict[int, Bookkeeping] | None = None) -> Start:
        """The start a checkpoint's meta records; ``books`` (when given) is updated with its members'."""
        books = books if books is not None else {}
        books.update(books_from_meta(meta))
        return cls(int(meta["step"]), float(meta["wall_s"]), list(meta.get("slots", [0])),
                   np.array(meta.get("live", [True]), bool), books)


class NoMetrics:
    """The metrics writer of a process that records nothing (every process but process 0)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def add(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def truncate_members(self, last: dict[int, int]) -> None:
        pass


class Session:
    """The records, feed, hooks and stop flag of one engine run (see the module docstring)."""

    def __init__(self, prep: Prepared, checkpoints: Path, metrics: Path, *, keep: int, members: bool,
                 stop: dict, stopped: Callable[[int], str], primary: bool = True, profiler: Profiler | None = None):
        self.prep, self.stop, self.stopped, self.profiler = prep, stop, stopped, profiler
        self.keep = keep
        self.checkpointer = Checkpointer(checkpoints, keep)
        self.metrics = MetricsTable(metrics, members=members) if primary else NoMetrics(metrics)
        self.hooks: dict[int, Hook] = {}
        self.feed: Feed | None = None
        self.start = Start()

    def restore(self, like: Any, onto: Any = None) -> tuple[Any, dict] | None:
        """The latest readable checkpoint (state, meta), or None (``Checkpointer.restore_latest``)."""
        return self.checkpointer.restore_latest(like, onto=onto)

    def fresh_checkpoints(self) -> None:
        """Drop the checkpoint folder (it holds another population's states) and start it anew."""
        self.checkpointer.close()
        remove_path(self.checkpointer.directory)
        self.checkpointer = Checkpointer(self.checkpointer.directory, self.keep)

    def begin(self, start: Start, seeds: list[int] | None = None, slots: int = 1, own_reader: bool = True,
              own_steps: dict[int, int] | None = None) -> Feed:
        """Start at ``start``: rows an earlier attempt wrote past it are dropped, and the feed opens there.

        ``own_steps`` (a refill population, whose members count their own steps): each trial's last
        step to keep rows of (a trial not in it keeps none), and a feed with a batch order per slot,
        each at its own step (``start.offsets``)."""
        self.start = start
        if own_steps is None:
            self.metrics.truncate_after(start.step)
            self.feed = open_feed(self.prep, start.step, seeds, slots, own_reader)
            return self.feed
        self.metrics.truncate_members(own_steps)
        if self.prep.reader is not None:
            raise PipelineError(f"dataset '{self.prep.cfg.data.name}' is streamed from disk (over the device "
                                "budget); refill needs it on the device: run without --refill")
        offsets = start.offsets or [0] * len(seeds)
        self.feed = SlotFeed(seeds, offsets, self.prep.train, self.prep.cfg.batch_size, self.prep.mesh)
        return self.feed

    def position(self, step: int) -> dict:
        """The checkpoint's record of where the data order stands at ``step``."""
        if isinstance(self.feed, StreamFeed):
            return {"reader": self.feed.reader_state(step)}
        prep = self.prep
        return {"reader": {"epoch": step // prep.steps_per_epoch, "offset": step % prep.steps_per_epoch,
                           "seed": prep.cfg.resolved_data_seed}}

    def close(self) -> None:
        """Stop the profiler and the feed, let the last checkpoint land, flush the metrics."""
        if self.profiler is not None:
            self.profiler.stop()
        if self.feed is not None:
            self.feed.close()
        self.checkpointer.wait()
        self.checkpointer.close()
        self.metrics.flush()

    def close_hooks(self, summary: dict | None = None) -> None:
        """The hooks' ``on_end`` (when the session finished with ``summary``), then their ``close``."""
        try:
            if summary is not None:
                for hooks in self.hooks.values():
                    hooks.on_end(summary)
        finally:
            for hooks in self.hooks.values():
                hooks.close()


def open_feed(prep: Prepared, start_step: int, seeds: list[int] | None = None, slots: int = 1,
              own_reader: bool = True) -> Feed:
    """The batches of ``seeds`` (default: the config's data seed) from ``start_step``: row indices into
    the resident split, or batches from the stream (one reader per distinct seed; the prepared
    reader is used, and closed with the feed, when ``own_reader``)."""
    cfg = prep.cfg
    seeds = seeds or [cfg.resolved_data_seed]
    if prep.reader is None:
        return ResidentFeed(seeds, prep.train, cfg.batch_size, prep.mesh, slots)

    def open_reader(seed: int) -> StreamingReader:
        if own_reader and seed == prep.reader.seed:
            return prep.reader
        return StreamingReader(prep.store, cfg.data.name, "train", cfg.batch_size, seed, cfg.data.shuffle_buffer,
                               cfg.data.prefetch, jax.process_index(), jax.process_count(), mesh=prep.mesh)

    return StreamFeed(seeds, open_reader, start_step, prep.mesh, slots)
