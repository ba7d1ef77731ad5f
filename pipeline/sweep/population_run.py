"""One population of a sweep, from first step to last, run by the training engine.

A population is a chunk of a group's trials: their states (fresh, or from the population's
Orbax checkpoint ``checkpoints/gG-cC/``), their metrics (``checkpoints/gG-cC.metrics/``, the
run's metrics writer with a ``trial`` column) and the engine that steps them. The final
checkpoint stays after the population ends: ``pipeline sweep export`` reads a trial's weights
from it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import to_dict
from pipeline.sweep.grouping import Group, Trial
from pipeline.track.metrics import MetricsTable
from pipeline.track.run_dir import remove_path
from pipeline.track.trackers import trackers
from pipeline.train.checkpoint import Checkpointer
from pipeline.train.engine import Engine, Selection, books_from_meta
from pipeline.train.evaluation import Bookkeeping
from pipeline.hooks import Hook, Hooks, RunInfo
from pipeline.train.prepare import Prepared, policy_of, run_feed, selection_of
from pipeline.train.population import SoloPopulation, VmapPopulation, stack, unstack
from pipeline.train.state import create_state, same_program


@dataclass
class Halving:
    rungs: tuple[int, ...] = ()
    keep: float = 0.5  # the fraction of live members that continue at each rung


@dataclass
class GroupRun:
    """What every population of one group shares: data, compiled programs, where to record."""

    group: Group
    prep: Prepared
    programs: Any
    vmap: bool
    trials: list[Trial]
    records: dict[int, Bookkeeping]
    checkpoints: Path
    halving: Halving
    interrupted: dict
    on_checkpoint: Callable[[], None]  # rewrites trials.parquet
    on_progress: Callable[[int, float], None] = lambda steps, loss: None
    seed_slots: int = 1  # distinct data seeds a population of this group holds, at most
    experiment: str = ""
    select: Selection = field(init=False)

    def __post_init__(self) -> None:
        self.select = selection_of(self.prep)


def population_folder(checkpoints: Path, group: int, index: int) -> Path:
    return checkpoints / f"g{group}-c{index}"


class _AfterSave(Hook):
    def __init__(self, callback: Callable[[], None]):
        self.callback = callback

    def on_checkpoint(self, step: int, best: bool) -> None:
        self.callback()


class PopulationRun:
    def __init__(self, run: GroupRun, index: int, members: list[int], size: int):
        self.run, self.members = run, members
        self.folder = population_folder(run.checkpoints, run.group.id, index)
        self.cfg = run.prep.cfg
        total = run.group.total_steps
        slots: list[int | None] = members + [None] * (size - len(members))
        self._forget_first_build()
        self.checkpointer = Checkpointer(self.folder, keep=1)
        self.metrics = MetricsTable(self.folder.with_name(self.folder.name + ".metrics"), members=True)
        step, wall, live, state = 0, 0.0, None, None
        restored = self.checkpointer.restore_latest(lambda meta: stack(self._fresh_states(meta["slots"])))
        if restored is not None and restored[1]["members"] == members:
            state, meta = restored
            slots, live, step, wall = meta["slots"], np.array(meta["live"], bool), meta["step"], meta["wall_s"]
            run.records.update(books_from_meta(meta))
        elif restored is not None:  # made by another chunking of the group: start over
            self.checkpointer.close()
            remove_path(self.folder)
            self.checkpointer = Checkpointer(self.folder, keep=1)
        self.metrics.truncate_after(step)
        if state is None:
            state = stack(self._fresh_states(slots))
        seeds = [self._slot_cfg(slot).resolved_data_seed for slot in slots]
        self.feed = run_feed(run.prep, step, seeds, run.seed_slots, own_reader=False)
        live = np.array([s is not None for s in slots]) if live is None else live
        if run.vmap:
            pop = VmapPopulation(run.programs, state, live, self.feed, step)
        else:
            pop = SoloPopulation(run.programs, unstack(state, len(slots)), live, self.feed, step)
        self.hooks = {t: self._trackers(t) for t in members}
        policy = policy_of(self.cfg, total, run.group.steps_per_call, single=False, rungs=run.halving.rungs,
                           keep=run.halving.keep)
        message = (f"interrupted at step {{step}} of group {run.group.id}; the sweep is checkpointed: continue it "
                   f"with the same command and --sweep-dir {run.checkpoints.parent}")
        self.engine = Engine(pop, slots, run.records, policy, run.select, run.prep.spec.objective, run.prep.evals,
                             self.metrics, self.checkpointer, self.hooks, run.interrupted, message, step=step,
                             wall_s=wall, live=live,
                             on_progress=lambda last, n, loss: run.on_progress(n, loss))

    def _forget_first_build(self) -> None:
        """The first build kept a population as ``state.npz`` + ``meta.json``: its trials start over."""
        if (self.folder / "meta.json").is_file() or (self.folder / "state.npz").is_file():
            print(f"note: {self.folder} is a checkpoint of the first build's format; this population's trials "
                  "start over (finished trials are kept)", file=sys.stderr)
            remove_path(self.folder)
            remove_path(self.folder.with_name(self.folder.name + ".curves"))

    def _trackers(self, trial: int) -> Hook:
        """Each member's trackers (``log=``), under ``SWEEP_DIR/trials/TRIAL/``; and the trials table
        rewritten at every checkpoint (by the first member's hook: once per save)."""
        tracked = trackers(self.cfg.log)
        if tracked:
            cfg = self.run.trials[trial].cfg
            info = RunInfo(self.run.checkpoints.parent / "trials" / str(trial), self.run.experiment, to_dict(cfg),
                           self.run.group.total_steps, 0)
            for hook in tracked:
                hook.on_start(info)
        if trial == self.members[0]:
            tracked.append(_AfterSave(self.run.on_checkpoint))
        return Hooks(tracked)

    def _fresh_states(self, slots: list[int | None]) -> list[Any]:
        states = []
        for slot in slots:
            spec, state = create_state(self._slot_cfg(slot), self.run.prep.info, self.run.group.total_steps)
            # plan.check_programs refused this before the sweep began; a member must never run another program.
            assert same_program(spec, self.run.prep.spec), f"trial {slot} does not fit its population's program"
            states.append(state)
        return states

    def _slot_cfg(self, slot: int | None):
        """A slot's trial config; padding slots (None) repeat the first member."""
        return self.run.trials[self.members[0] if slot is None else slot].cfg

    def execute(self) -> None:
        try:
            self.engine.execute()
        finally:
            self.close()

    def close(self) -> None:
        self.feed.close()
        self.checkpointer.wait()
        self.checkpointer.close()
        self.metrics.flush()
        for hooks in self.hooks.values():
            hooks.close()

    def abandon(self) -> None:
        """The plan probe's population, when its group runs one member at a time instead: everything
        it trained and wrote goes, and its members are pending again."""
        self.close()
        for path in (self.folder, self.metrics.path,
                     *(self.run.checkpoints.parent / "trials" / str(t) for t in self.members)):
            remove_path(path)
        for t in self.members:
            self.run.records[t] = Bookkeeping()

    def curves(self) -> pa.Table:
        return self.metrics.table()

    def forget_metrics(self) -> None:
        """Once merged into ``curves.parquet``, the population's own metrics folder goes."""
        remove_path(self.metrics.path)
