"""One population of a sweep, from first step to last, run by the training engine.

A population is a chunk of a group's trials trained as one session (``pipeline.train.session``):
their states (fresh, or from the population's Orbax checkpoint ``checkpoints/gG-cC/``), their
metrics (``checkpoints/gG-cC.metrics/``, the metrics writer with a ``trial`` column), their
trackers, and the engine that steps them. The final
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
from pipeline.durable.files import remove_path
from pipeline.hooks import Hook, Hooks, RunInfo
from pipeline.sweep.grouping import Group, Trial
from pipeline.track.trackers import trackers
from pipeline.train.engine import Engine, Events, Policy
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.population import SoloPopulation, VmapPopulation, fresh_population, unstack
from pipeline.train.prepare import Prepared
from pipeline.train.selection import Selection
from pipeline.train.session import Session, Start, stop_message
from pipeline.train.state import InitialStates, same_program


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
    decide: Callable[[int, dict[int, dict]], dict[int, str]] | None = None  # a search's pruner (``Events.decide``)
    # A search that acts on the population (PBT): ``Events.at_evaluation`` and ``Events.search_state``, and
    # ``on_start(meta)`` with the restored checkpoint's meta (None: a fresh start) before the feed opens.
    at_evaluation: Callable[[Engine], None] | None = None
    search_state: Callable[[], dict] | None = None
    on_start: Callable[[dict | None], None] | None = None
    hooks: Callable[[int], list[Hook]] | None = None  # a trial's own hooks (``pipeline.sweep(hooks=)``), by trial id
    select: Selection = field(init=False)
    initial: InitialStates = field(init=False)  # each trial's initial state (``create_state``'s, made faster)

    def __post_init__(self) -> None:
        self.select = self.prep.selection
        self.initial = InitialStates(self.prep.info, self.group.total_steps)


def population_folder(checkpoints: Path, group: int, index: int) -> Path:
    return checkpoints / f"g{group}-c{index}"


class _AfterSave(Hook):
    def __init__(self, callback: Callable[[], None]):
        self.callback = callback

    def on_checkpoint(self, step: int, best: bool) -> None:
        self.callback()


def trial_hooks(trial: Trial, sweep_dir: Path, experiment: str, total_steps: int,
                own: Callable[[int], list[Hook]] | None, after_save: Callable[[], None] | None) -> Hook:
    """A member's hooks: its trackers (``log=``, under ``SWEEP_DIR/trials/TRIAL/``, told their sweep so
    MLflow nests the trial under the sweep's run and W&B groups it) and its own hooks (``pipeline.sweep
    (hooks=)``); ``after_save`` (given to one member: once per save) rewrites the trials table."""
    tracked = trackers(trial.cfg) + (list(own(trial.id)) if own else [])
    if tracked:
        info = RunInfo(sweep_dir / "trials" / str(trial.id), experiment, to_dict(trial.cfg), total_steps, 0,
                       sweep_dir=sweep_dir, trial=trial.id, swept=dict(trial.values))
        for hook in tracked:
            hook.on_start(info)
    if after_save is not None:
        tracked.append(_AfterSave(after_save))
    return Hooks(tracked)


class PopulationRun:
    """One population of a group: a training session whose members are the chunk's trials."""

    def __init__(self, run: GroupRun, index: int, members: list[int], size: int):
        self.run, self.members = run, members
        self.folder = population_folder(run.checkpoints, run.group.id, index)
        self.cfg = run.prep.cfg
        slots: list[int | None] = members + [None] * (size - len(members))
        self._forget_format_one()
        sweep_dir = run.checkpoints.parent
        self.session = session = Session(
            run.prep, self.folder, self.folder.with_name(self.folder.name + ".metrics"), keep=1, members=True,
            stop=run.interrupted, stopped=lambda step: stop_message(
                f"at step {step} of group {run.group.id}",
                f"continue the sweep with the same command and --sweep-dir {sweep_dir}"))
        state, start, meta = None, Start(slots=slots, books=run.records), None
        # A sweep runs in one process: a population folder not yet on disk has nothing to restore.
        restored = (session.restore(lambda meta: self._fresh_state(meta["slots"]))
                    if self.folder.exists() else None)
        if restored is not None and restored[1]["members"] == members:
            state, meta = restored
            start = Start.from_meta(meta, run.records)
        elif restored is not None:  # made by another chunking of the group: start over
            session.fresh_checkpoints()
        if state is None:
            state = self._fresh_state(start.slots)
        if run.on_start is not None:
            run.on_start(meta)
        seeds = [self._slot_cfg(slot).resolved_data_seed for slot in start.slots]
        feed = session.begin(start, seeds, run.seed_slots, own_reader=False)
        if start.live is None:
            start.live = np.array([s is not None for s in start.slots])
        if run.vmap:
            pop = VmapPopulation(run.programs, state, start.live, feed, start.step)
        else:
            pop = SoloPopulation(run.programs, unstack(state, len(start.slots)), start.live, feed, start.step)
        session.hooks = {t: self._trackers(t) for t in members}
        policy = Policy(run.group.total_steps, run.group.steps_per_call, self.cfg.eval_every, self.cfg.patience,
                        self.cfg.checkpoint_every, self.cfg.checkpoint_minutes, single=False,
                        rungs=run.halving.rungs, keep=run.halving.keep)
        self.engine = Engine(pop, session, policy, run.select,
                             Events(on_progress=lambda last, n, loss: run.on_progress(n, loss),
                                    **({"decide": run.decide} if run.decide else {}),
                                    **({"at_evaluation": run.at_evaluation} if run.at_evaluation else {}),
                                    **({"search_state": run.search_state} if run.search_state else {})))

    @property
    def metrics(self):
        return self.session.metrics

    def _forget_format_one(self) -> None:
        """A population checkpoint of format 1 (``state.npz`` + ``meta.json``) cannot be resumed: its
        trials start over (finished trials are kept)."""
        if (self.folder / "meta.json").is_file() or (self.folder / "state.npz").is_file():
            print(f"note: {self.folder} is a checkpoint of format 1; this population's trials "
                  "start over (finished trials are kept)", file=sys.stderr)
            remove_path(self.folder)
            remove_path(self.folder.with_name(self.folder.name + ".curves"))

    def _trackers(self, trial: int) -> Hook:
        return trial_hooks(self.run.trials[trial], self.run.checkpoints.parent, self.run.experiment,
                           self.run.group.total_steps, self.run.hooks,
                           self.run.on_checkpoint if trial == self.members[0] else None)

    def _fresh_state(self, slots: list[int | None]) -> Any:
        """The slots' trials' initial states, stacked (``fresh_population``)."""
        specs, state = fresh_population(self.run.initial, [self._slot_cfg(slot) for slot in slots])
        for slot, spec in zip(slots, specs):
            # grouping.check_programs refused this before the sweep began; a member must never run another program.
            assert same_program(spec, self.run.prep.spec), f"trial {slot} does not fit its population's program"
        return state

    def _slot_cfg(self, slot: int | None):
        """A slot's trial config; padding slots (None) repeat the first member."""
        return self.run.trials[self.members[0] if slot is None else slot].cfg

    def execute(self) -> None:
        try:
            self.engine.execute()
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.session.close()
        finally:
            self.session.close_hooks()

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
