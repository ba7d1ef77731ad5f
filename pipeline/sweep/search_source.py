"""``pipeline sweep --strategy tpe|gp|cmaes|qmc --refill``: one population whose freed slots ask the study.

Instead of rounds (``rounds.py``), the search trains ONE refill population (``refill.py``): its
slots start with the first trials asked, and whenever a member stops, its slot takes a trial
asked of the study at that moment, so every ask sees every result told so far. Each member's
result is told as it ends: the selection metric at its selected step, PRUNED for a member
stopped by the pruner or at an ASHA rung, FAILED for one that diverged before any evaluation
(the rule of ``rounds.py``). ``--trials`` is the budget of asks.

Every asked trial must run in the population's one compiled program, so a space whose keys
would split trials into groups is refused before anything is written.

Resume: trial ids are the study's trial numbers, so the journal's asked trials are the trials.
The source's position (how many trials it handed out) is in every checkpoint's meta; a resumed
sweep hands out the journal's trials again in order, with their parameters, before it asks a new
one, and a result the journal already holds is not told twice. After a stop (Ctrl-C, SIGTERM) the
checkpoint and the journal agree, so the resumed sweep is the uninterrupted one; after a hard kill, a
pruner's verdicts between the last checkpoint and the kill may see trials the killed attempt told.
``trials.parquet``'s ``round`` is 0 for every trial (no rounds; the trial id is the order asked).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.data import Store, ensure_dataset
from pipeline.durable.files import write_json
from pipeline.durable.records import read_json
from pipeline.sweep import folder, grouping, records
from pipeline.sweep.refill import run_refill_group
from pipeline.sweep.timing import SweepClock
from pipeline.train.evaluation import FINISHED, Bookkeeping
from pipeline.train.prepare import prepare

STOPPED = ("pruned", "stopped")  # told to the study as pruned (a pruner's stop, an ASHA rung's)


def result(rec: Bookkeeping, split: str, metric: str) -> tuple[float | None, bool]:
    """What a finished member tells the study: its selection metric at its selected step (None when it
    never had one: it failed), and whether it was pruned."""
    return rec.best_eval.get(split, {}).get(metric), rec.status in STOPPED


def check_one_program(sp: Any, store: Store) -> None:
    """Refuse, in one line naming the key, a space whose values would put trials in different compiled
    programs (a key that is not traced, a switch swept across 0): one population runs them all."""
    dims = sp.space.dimensions
    first = {d.key: d.values[0] if d.finite else d.low for d in dims}
    for d in dims:
        values = d.values if d.finite else (d.low, (d.low + d.high) / 2, d.high)
        keys: set[str] = set()
        for value in values:
            keys.add(grouping.group_key(grouping.make_trials(sp.base, sp.space, [{**first, d.key: value}])[0].cfg))
            if len(keys) > 1:
                raise ConfigError(f"bad space for '{d.key}': --refill with --strategy {sp.strategy} trains every "
                                  f"trial in one population, and '{d.key}' changes its compiled program (only "
                                  "traced hyperparameters, each on one side of 0, can vary); fix it, or run "
                                  "without --refill")
    ends = [first] + [{**first, d.key: d.values[-1] if d.finite else d.high} for d in dims]
    trials = grouping.make_trials(sp.base, sp.space, ends)
    infos = {trials[0].cfg.data.name: ensure_dataset(store, trials[0].cfg.data.name)}
    grouping.check_programs([grouping.Group(0, "", [t.id for t in trials])], trials, infos)


class SearchSource:
    """A ``TrialSource`` over a search (``optuna_search.OptunaSearch``): each freed slot's trial asked of it.

    Trials are made as they are asked and appended to the sweep's ``trials`` (ids are the study's
    numbers), with a pending record in ``recs`` and their id in ``group.trials``.
    """

    def __init__(self, search: Any, sp: Any, store: Store, budget: int, trials: list[grouping.Trial],
                 recs: dict[int, Bookkeeping], split: str, metric: str, prunes: bool):
        self.search, self.sp, self.store, self.budget = search, sp, store, budget
        self.trials, self.recs, self.split, self.metric, self.prunes = trials, recs, split, metric, prunes
        self.infos: dict[str, Any] = {}
        self.group: grouping.Group | None = None
        self.handed = 0  # trials given a slot so far: the next one is trials[handed] (asked, or to ask)
        for point in search.asked():  # a resumed sweep: the journal's trials, with their parameters
            self._add(point)

    def prime(self, n: int) -> None:
        """At least ``n`` trials asked (the population's first slots): asked together, as a round would be."""
        while len(self.trials) < n:
            self._add(self.search.ask(1)[0])

    def _add(self, point: Any) -> None:
        t = grouping.asked_trial(self.sp.base, self.sp.space, point.trial, point.values, len(self.trials))
        self.trials.append(t)
        self.recs.setdefault(t.id, Bookkeeping())
        name = t.cfg.data.name
        if name not in self.infos:
            self.infos[name] = ensure_dataset(self.store, name)
        if self.group is None:
            (self.group,) = grouping.make_groups([t], self.infos)
            return
        # check_one_program refused the space's keys one by one; a combination of them is caught here.
        if t.program_key != self.group.key:
            raise ConfigError(f"trial {t.id} ({' '.join(t.overrides[-len(t.values):])}) needs another compiled "
                              "program than the population's; --refill runs one: run without --refill")
        grouping.check_programs([grouping.Group(0, "", [self.group.trials[0], t.id])], self.trials, self.infos)
        t.group = self.group.id
        self.group.trials.append(t.id)

    # -- the TrialSource protocol (pipeline.train.slots) ------------------------------------------
    def next_trial(self) -> int | None:
        if self.spent():
            return None
        if self.handed == len(self.trials):
            self._add(self.search.ask(1)[0])
        self.handed += 1
        return self.handed - 1

    def spent(self) -> bool:
        return self.handed >= self.budget

    def tell(self, trial: int, book: Bookkeeping) -> None:
        if trial not in {p.trial for p in self.search.running()}:
            return  # told before a stop: a resumed sweep replays the same result
        value, pruned = result(book, self.split, self.metric)
        self.search.tell(trial, value, pruned=pruned)

    def position(self) -> dict:
        return {"next": self.handed}

    def restore(self, position: dict) -> None:
        self.handed = int(position["next"])

    # -- the pruner (Events.decide) ----------------------------------------------------------------
    def decide(self, step: int, evals: dict[int, dict]) -> dict[int, str]:
        """Every evaluated member's value reported at its own ``step``; the pruner's verdicts back."""
        self.search.report(step, {t: last.get(self.split, {}).get(self.metric, math.nan) for t, last in evals.items()})
        if not self.prunes:
            return {}
        return {t: "pruned" for t in evals if self.search.should_prune(t, step)}

    def tell_finished(self) -> None:
        """Trials the table records finished but the study still holds running (told again, the same)."""
        for t in [p.trial for p in self.search.running()]:
            if t < len(self.trials) and self.recs[t].status in FINISHED:
                self.tell(t, self.recs[t])


def run_refill_search(sp: Any, store: Store, opts: Any, sweep_dir: Path, search: Any, size: int, budget: int,
                      split: str, metric: str, interrupted: dict, on_progress: Callable[[int, float], None],
                      clock: SweepClock | None = None
                      ) -> tuple[list[grouping.Trial], dict[int, Bookkeeping], list[grouping.Group],
                                 dict[str, dict[str, Any]], dict[str, Any]]:
    """Run (or resume) the search as one refill population of ``size`` slots; returns its trials, records,
    group, plans and datasets (what ``rounds.Searched`` holds)."""
    trials: list[grouping.Trial] = []
    recs = records.read_records(sweep_dir / "trials.parquet")
    source = SearchSource(search, sp, store, budget, trials, recs, split, metric, opts.pruner is not None)
    source.prime(min(size, budget))
    g = source.group
    g.chunks = [g.trials[:size]]  # the population's planned size (refill.population_size)

    def write_trials() -> None:
        records.write_parquet(records.trials_table(trials, recs, sp.swept), sweep_dir / "trials.parquet")

    write_trials()
    plans = dict(read_json(sweep_dir / folder.SWEEP_FILE).get("plans", {}))
    if len(trials) >= budget and all(recs[t.id].status in FINISHED for t in trials[:budget]):
        source.tell_finished()  # done before: nothing to train again
        return trials, recs, [g], plans, source.infos
    prep = prepare(trials[0].cfg, store, steps_per_call=g.steps_per_call)
    try:
        run_refill_group(g, prep, trials, recs, sweep_dir, opts, plans, interrupted, write_trials, on_progress,
                         sp.name, source=source, decide=source.decide, clock=clock)
    finally:
        if prep.reader is not None:
            prep.reader.close()
    plans[str(g.id)]["why"] = "a search trains populations"
    write_json(sweep_dir / folder.SWEEP_FILE, {**read_json(sweep_dir / folder.SWEEP_FILE), "plans": plans})
    return trials, recs, [g], plans, source.infos
