"""``pipeline sweep --refill``: a group's trials through one population whose freed slots take the next trial.

The group runs as ONE population of the planned size (its largest chunk). Its slots start with
the source's first trials; whenever a member stops (a rung, patience, a pruner, divergence, or
its last step), its slot takes the source's next trial at the next evaluation boundary (a
global step that is a multiple of ``eval_every``): the trial's fresh state, exactly as
``create_state`` makes it for its solo run, and its data order from its step 0. Each member
counts its own steps; with ``--rungs`` each rung is decided asynchronously (ASHA,
``pipeline.train.slots.RungRecord``). The size and every input shape stay fixed: one compiled
program. The engine does the turnover (``pipeline.train.engine``, ``Refill``); this module sets
the population up, restores it (the slots' trials and offsets, the source's position and the
rungs' record are in every checkpoint's meta) and records it like any population of a sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pipeline.durable.files import remove_path
from pipeline.errors import PipelineError
from pipeline.hooks import Hook
from pipeline.sweep import plan_rule, records
from pipeline.sweep.grouping import Group, Trial
from pipeline.sweep.population_run import population_folder, trial_hooks
from pipeline.sweep.timing import SweepClock
from pipeline.train.engine import Engine, Events, Policy
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.population import SoloPopulation, VmapPopulation, stack, unstack
from pipeline.train.prepare import Prepared
from pipeline.train.programs import solo_programs, vmapped_programs
from pipeline.train.session import Session, Start, stop_message
from pipeline.train.slots import Refill
from pipeline.train.state import InitialStates, same_program


class TrialList:
    """The simplest ``TrialSource``: trials drawn up front (``--strategy random``, a grid), in order."""

    def __init__(self, trials: list[int]):
        self.trials, self.next_index = list(trials), 0

    def next_trial(self) -> int | None:
        if self.spent():
            return None
        self.next_index += 1
        return self.trials[self.next_index - 1]

    def spent(self) -> bool:
        return self.next_index >= len(self.trials)

    def tell(self, trial: int, book: Bookkeeping) -> None:
        pass  # a list does not learn

    def position(self) -> dict:
        return {"next": self.next_index}

    def restore(self, position: dict) -> None:
        self.next_index = int(position["next"])


def check_refill(prep: Prepared) -> None:
    """One line, before anything is written, for what refill cannot do."""
    if prep.reader is not None:
        raise PipelineError(f"dataset '{prep.cfg.data.name}' is streamed from disk (over the device budget); "
                            "--refill needs it on the device: run without --refill")


class RefillPopulation:
    """A group's one refill population: a training session whose slots turn over (``checkpoints/gG-c0/``)."""

    def __init__(self, g: Group, prep: Prepared, trials: list[Trial], recs: dict[int, Bookkeeping],
                 sweep_dir: Path, size: int, vmap: bool, rungs: tuple[int, ...], keep: float, interrupted: dict,
                 write_trials: Callable[[], None], on_progress: Callable[[int, float], None], experiment: str = "",
                 source: Any = None, decide: Callable | None = None, hooks: Callable[[int], list] | None = None):
        check_refill(prep)
        self.hooks = hooks
        self.group, self.prep, self.trials, self.recs, self.experiment = g, prep, trials, recs, experiment
        self.sweep_dir, self.write_trials = sweep_dir, write_trials
        self.source = source if source is not None else TrialList(g.trials)
        self.initial = InitialStates(prep.info, g.total_steps)
        self.folder = population_folder(sweep_dir / "checkpoints", g.id, 0)
        self.session = session = Session(
            prep, self.folder, self.folder.with_name(self.folder.name + ".metrics"), keep=1, members=True,
            stop=interrupted, stopped=lambda step: stop_message(
                f"at step {step} of group {g.id}",
                f"continue the sweep with the same command and --sweep-dir {sweep_dir}"))
        refill = Refill(self.source, lambda t: (self.fresh_state(t), self.trials[t].cfg.resolved_data_seed),
                        self._trackers)
        like = self.fresh_state(g.trials[0])
        restored = session.restore(lambda meta: stack([like] * len(meta["slots"])))
        if restored is not None and "refill" not in restored[1]:  # a population of a sweep without --refill
            session.fresh_checkpoints()
            restored = None
        if restored is not None:
            state, meta = restored
            start = self._resumed(meta, refill)
            own_steps = self._own_steps(start)
        else:
            start, own_steps = self._fresh_start(size, refill), {}
            state = stack([self.fresh_state(t if t is not None else g.trials[0]) for t in start.slots])
        self.first = start.members[0] if start.members else None
        seeds = [self.trials[t if t is not None else g.trials[0]].cfg.resolved_data_seed for t in start.slots]
        feed = session.begin(start, seeds, own_reader=False, own_steps=own_steps)
        programs = (vmapped_programs if vmap else solo_programs)(prep.spec, g.steps_per_call)
        if vmap:
            pop = VmapPopulation(programs, state, start.live, feed, start.step)
            if not self.source.spent():  # a slot will be refilled: its put compiled beside the first calls
                pop.put_ahead(like)
        else:
            pop = SoloPopulation(programs, unstack(state, len(start.slots)), start.live, feed, start.step)
        session.hooks = {t: self._trackers(t) for t in start.members}
        cfg = prep.cfg
        policy = Policy(g.total_steps, g.steps_per_call, cfg.eval_every, cfg.patience, cfg.checkpoint_every,
                        cfg.checkpoint_minutes, single=False, rungs=tuple(rungs), keep=keep)
        events = Events(on_progress=lambda last, n, loss: on_progress(n, loss),
                        **({"decide": decide} if decide else {}))
        self.engine = Engine(pop, session, policy, prep.selection, events, refill=refill)

    def fresh_state(self, trial: int) -> Any:
        """The trial's initial state, exactly as its solo run makes it (``create_state``)."""
        spec, state = self.initial(self.trials[trial].cfg)
        # grouping.check_programs refused this before the sweep began; a member must never run another program.
        assert same_program(spec, self.prep.spec), f"trial {trial} does not fit its population's program"
        return state

    def _fresh_start(self, size: int, refill: Refill) -> Start:
        """The slots filled with the source's first trials (None: padding); every trial of the group pending."""
        for t in self.group.trials:
            self.recs[t] = Bookkeeping()
        slots: list[int | None] = []
        while len(slots) < size and (trial := self.source.next_trial()) is not None:
            slots.append(trial)
            refill.entered[trial] = 0
        members = list(slots)
        slots += [None] * (size - len(slots))
        return Start(slots=slots, live=np.array([s is not None for s in slots]), books=self.recs,
                     members=members, offsets=[0] * size)

    def _resumed(self, meta: dict, refill: Refill) -> Start:
        """Where a checkpoint left the population; the trials that had not taken a slot then are pending again
        (their records may say how far a later, lost, attempt took them)."""
        start = Start.from_meta(meta, self.recs)
        start.members, start.offsets = list(meta["members"]), list(meta["offsets"])
        refill.restore(meta["refill"])
        for t in self.group.trials:
            if t not in start.members:
                self.recs[t] = Bookkeeping()
        return start

    def _own_steps(self, start: Start) -> dict[int, int]:
        """Each trial's last own step with rows to keep: a live member's at the checkpoint, a finished
        member's all of them; a trial that took its slot after the checkpoint keeps none."""
        last = {t: self.group.total_steps for t in start.members}
        for slot, t in enumerate(start.slots):
            if t is not None and start.live[slot]:
                last[t] = start.step - int(start.offsets[slot])
        return last

    def _trackers(self, trial: int) -> Hook:
        return trial_hooks(self.trials[trial], self.sweep_dir, self.experiment, self.group.total_steps, self.hooks,
                           self.write_trials if trial == self.first else None)

    def execute(self) -> None:
        try:
            self.engine.execute()
        finally:
            try:
                self.session.close()
            finally:
                self.session.close_hooks()


def population_size(g: Group, vmap: bool) -> int:
    """The planned population size (the group's largest chunk), a multiple of the devices when vmapped."""
    size = max(len(c) for c in g.chunks) if g.chunks else len(g.trials)
    return -(-size // jax.device_count()) * jax.device_count() if vmap else size


def run_refill_group(g: Group, prep: Prepared, trials: list[Trial], recs: dict[int, Bookkeeping], sweep_dir: Path,
                     opts: Any, plans: dict[str, dict[str, Any]], interrupted: dict,
                     write_trials: Callable[[], None], on_progress: Callable[[int, float], None], name: str = "",
                     source: Any = None, decide: Callable | None = None, clock: SweepClock | None = None) -> None:
    """Group ``g`` as one refill population (``opts``: ``SweepOptions``; its ``vmap`` False runs the members
    one at a time, True vmapped, else ``plan_rule.fixed_plan``: no plan probe), then its curves merged into
    ``curves.parquet`` and the trials table written. ``plans[str(g.id)]`` says how it ran."""
    vmap, plans[str(g.id)] = plan_rule.fixed_plan(opts, plans.get(str(g.id)), prep, population_size(g, False),
                                                  "--refill", refill=True)
    population = RefillPopulation(g, prep, trials, recs, sweep_dir, population_size(g, vmap), vmap,
                                  tuple(opts.rungs), opts.keep, interrupted, write_trials, on_progress, name,
                                  source, decide, opts.hooks)
    population.execute()
    if clock is not None:
        clock.population_ended(population.engine)
    records.merge_curves(sweep_dir / "curves.parquet", population.session.metrics.table(), population.folder.name)
    write_trials()
    remove_path(population.session.metrics.path)
