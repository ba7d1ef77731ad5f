"""A search's rounds: ask a population's worth of trials, train them as populations, tell the results.

Each round asks ``round_size`` trials of the search (the last round the rest of the budget),
groups them by compiled program, trains each group's share as populations padded to the group's
one population size, and tells every trial's result before the next round is asked (the round's
last results and the next round's asks in one append of the journal). A group's data and compiled
programs are made once and reused by every later round: a new batch of the same group compiles
nothing.

The loop talks to its search through ``ask(n, round)``, ``report(step, {trial: value})`` (at each
evaluation, when a pruner reads it), ``report_curve(trial, {step: value})`` (with the result, when
none does), ``should_prune(trial, step)``, ``tell(trial, value, pruned)``, ``together()`` (a block whose
changes land at once), ``asked()`` and ``running()``
(``optuna_search.OptunaSearch``). A killed sweep resumes exactly: the trials the journal holds are
the trials, grouped and chunked again as before (so each population finds its checkpoint), and the
round it was in goes on; trials recorded finished but not yet told are told first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import pyarrow as pa

from pipeline.config import ConfigError
from pipeline.data import Store, ensure_dataset
from pipeline.durable.files import write_json
from pipeline.durable.records import read_json
from pipeline.errors import PipelineError
from pipeline.signals import sigint_flag
from pipeline.sweep import folder, grouping, optuna_search, plan_rule, records, search_source, strategy
from pipeline.sweep.population_run import GroupRun, Halving, PopulationRun
from pipeline.sweep.timing import SweepClock
from pipeline.track.progress import Progress, sweep_work
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs, vmapped_programs
from pipeline.train.state import create_state

ROUNDS = 4  # without --max-population a search's budget is asked in about this many rounds
STOPPED = ("pruned", "stopped")  # told to the search as pruned


def round_size(budget: int, max_population: int | None, capacity: int) -> int:
    """Trials asked a round: ``--max-population`` when given; else ``min(capacity, max(2, ceil(budget / 4)))``
    (a few rounds, each one population that fits the memory budget), never more than the budget."""
    if max_population:
        return max_population
    return max(1, min(capacity, max(2, math.ceil(budget / ROUNDS)), budget))


def check_budget(budget: int, max_population: int | None) -> None:
    if max_population and budget < max_population:
        raise ConfigError(f"bad value for '--trials': {budget} is less than one population (--max-population "
                          f"{max_population}); a search asks a whole population at a time")


@dataclass
class Searched:
    """What a finished search hands back to ``run_sweep`` for its summary."""

    sweep_dir: Path
    trials: list[grouping.Trial]
    recs: dict[int, records.TrialRecord]
    groups: list[grouping.Group]
    plans: dict[str, dict[str, Any]]
    infos: dict[str, Any]
    rounds: int
    clock: SweepClock


@dataclass(frozen=True)
class Rules:
    """The sweep's own rules, from ``runner``: the split and metric that rank trials (and whether
    higher is better), and the check of ``--rungs`` against a group's steps."""

    selection: Callable[[grouping.Trial, dict], tuple[str, str, bool]]
    check_halving: Callable[[Any, list[grouping.Group], list[grouping.Trial]], None]


@dataclass
class _GroupPrograms:
    """A group's data, compiled programs and population size, made at its first round."""

    prep: Any
    run: GroupRun
    size: int


@dataclass
class RoundLoop:
    sp: Any  # runner.ResolvedSweep
    store: Store
    opts: Any  # runner.SweepOptions
    sweep_dir: Path
    search: Any  # optuna_search.OptunaSearch, or any object with its interface
    size: int  # trials a round
    budget: int
    split: str
    metric: str
    interrupted: dict
    on_progress: Callable[[int, float], None]
    rules: Rules
    trials: list[grouping.Trial] = field(default_factory=list)  # by id (the search's trial number)
    recs: dict[int, records.TrialRecord] = field(default_factory=dict)
    round_of: dict[int, int] = field(default_factory=dict)
    groups: list[grouping.Group] = field(default_factory=list)
    infos: dict[str, Any] = field(default_factory=dict)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    told: set[int] = field(default_factory=set)
    compiled: dict[int, _GroupPrograms] = field(default_factory=dict)
    capacity: dict[int, int] = field(default_factory=dict)
    populations: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # round -> [(group, chunk)]
    clock: SweepClock = field(default_factory=SweepClock)
    graphs: dict[str, dict] = field(default_factory=dict)  # the model builds check_programs made
    written: Any = None  # the trials table last written

    def run(self) -> int:
        """Every round to the end of the budget; returns the number of rounds."""
        asked = self.search.asked()
        running = {p.trial for p in self.search.running()}
        self.told = {p.trial for p in asked} - running
        saved = records.read_records(self.sweep_dir / "trials.parquet")
        r = 0
        last = None  # the round's last population, told in the same append as the next round's asks
        try:
            while r * self.size < self.budget:
                want = min(self.size, self.budget - r * self.size)
                points = [p for p in asked if p.round == r]
                with self.search.together():
                    if last is not None:
                        self._tell(*last)
                    if len(points) < want:  # a new round, or one a kill cut short while it was asked
                        points += self.search.ask(want - len(points), r)
                self._add(r, points, saved)
                last = self._train(r)
                r += 1
            if last is not None:
                self._tell(*last)
        finally:
            for compiled in self.compiled.values():
                if compiled.prep.reader is not None:
                    compiled.prep.reader.close()
        return r

    # -- a round's trials, groups and populations ------------------------------------------------
    def _add(self, r: int, points: list[Any], saved: dict[int, records.TrialRecord]) -> None:
        new = []
        for p in points:
            t = grouping.asked_trial(self.sp.base, self.sp.space, p.trial, p.values, len(self.trials))
            self.trials.append(t)
            self.recs[t.id] = saved.get(t.id, records.TrialRecord())
            self.round_of[t.id] = r
            new.append(t)
            if t.cfg.data.name not in self.infos:
                self.infos[t.cfg.data.name] = ensure_dataset(self.store, t.cfg.data.name)
        before = {g.id: g.chunks for g in self.groups}
        self.groups = grouping.make_groups(self.trials, self.infos)  # ids by first appearance: stable
        for g in self.groups:
            g.chunks = before.get(g.id, [])
        mine = [(g, [t.id for t in new if t.group == g.id]) for g in self.groups]
        mine = [(g, ids) for g, ids in mine if ids]
        this_round = [grouping.Group(g.id, g.key, [g.trials[0], *ids], total_steps=g.total_steps,
                                     steps_per_call=g.steps_per_call) for g, ids in mine]
        self.rules.check_halving(self.opts, this_round, self.trials)
        grouping.check_programs(this_round, self.trials, self.infos, self.graphs)
        self.populations[r] = []
        for g, ids in mine:
            for members in grouping.chunk(ids, self._capacity(g)):
                self.populations[r].append((g.id, len(g.chunks)))
                g.chunks.append(members)
        self.write_trials()

    def _capacity(self, g: grouping.Group) -> int:
        """Members of one population of group ``g``: the round size, or fewer when memory is short."""
        if g.id not in self.capacity:
            cfg = self.trials[g.trials[0]].cfg
            info = self.infos[cfg.data.name]
            per_member = grouping.member_bytes(create_state(cfg, info, g.total_steps)[1], cfg, info)
            self.capacity[g.id] = min(self.size, grouping.population_size(per_member, None,
                                                                          self.opts.population_memory))
        return self.capacity[g.id]

    def _train(self, r: int) -> tuple[list[int], pa.Table | None] | None:
        """The round's populations, one after another, each one's trials told as the next starts; the last
        one's members and curves are returned untold (a kill before they are told loses nothing: a resumed
        sweep tells finished trials first, from ``curves.parquet``)."""
        last = None
        for gid, index in self.populations[r]:
            if last is not None:
                self._tell(*last)
            g = self.groups[gid]
            members = g.chunks[index]
            curves = None
            if any(self.recs[t].status not in records.FINISHED for t in members):
                compiled = self._compiled(g)
                population = PopulationRun(compiled.run, index, members, compiled.size)
                self.clock.population_starts()
                population.execute()
                self.clock.population_ended(population.engine)
                curves = records.merge_curves(self.sweep_dir / "curves.parquet", population.curves(),
                                              population.folder.name)
                self.write_trials()
                population.forget_metrics()
            last = (members, curves)
        return last

    def _tell(self, members: list[int], curves: pa.Table | None = None) -> None:
        """Finished members' results, once: the selection metric at each one's selected step. Without a
        pruner, each one's values at its evaluations (``curves``: its population's; None: read from
        ``curves.parquet``) go with its result, in the same append (``decide`` wrote none)."""
        untold = [t for t in members if t not in self.told and self.recs[t].status in records.FINISHED]
        if not untold:
            return
        if self.opts.pruner is None:
            curves = curves if curves is not None else records.read_curves(self.sweep_dir / "curves.parquet")
            values = records.metric_curves(curves, self.split, self.metric, untold)
        with self.search.together():
            for t in untold:
                rec = self.recs[t]
                if self.opts.pruner is None:
                    self.search.report_curve(t, values.get(t, {}))
                self.search.tell(t, rec.best_eval.get(self.split, {}).get(self.metric), pruned=rec.status in STOPPED)
                self.told.add(t)

    def _compiled(self, g: grouping.Group) -> _GroupPrograms:
        """Group ``g``'s data, programs and population run: made once, reused by every round."""
        if g.id in self.compiled:
            return self.compiled[g.id]
        opts = self.opts
        prep = prepare(self.trials[g.trials[0]].cfg, self.store, steps_per_call=g.steps_per_call)
        saved = read_json(self.sweep_dir / folder.SWEEP_FILE)
        vmap, plan = plan_rule.fixed_plan(opts, saved.get("plans", {}).get(str(g.id)), prep, self._capacity(g),
                                          "a search", why="a search trains populations")
        make = vmapped_programs if vmap else solo_programs
        programs = make(prep.spec, g.steps_per_call, stream=prep.reader is not None)
        size = self._capacity(g)
        if vmap:  # a multiple of the devices, so each device steps its own members
            size = -(-size // jax.device_count()) * jax.device_count()
        # Members of a population may differ in data seed: keep the input shape of the program one
        # for every round (one batch-order row per member) when the data seed is swept.
        swept = set(self.sp.swept)
        seeds = "data_seed" in swept or ("seed" in swept and self.trials[g.trials[0]].cfg.data_seed is None)
        run = GroupRun(g, prep, programs, vmap, self.trials, self.recs, self.sweep_dir / "checkpoints",
                       Halving(tuple(opts.rungs), opts.keep), self.interrupted, self.write_trials,
                       self.on_progress, size if seeds else 1, self.sp.name, decide=self.decide, hooks=opts.hooks)
        self.compiled[g.id] = _GroupPrograms(prep, run, size)
        self.plans[str(g.id)] = plan
        write_json(self.sweep_dir / folder.SWEEP_FILE, {**saved, "plans": {**saved.get("plans", {}), **self.plans}})
        return self.compiled[g.id]

    def decide(self, step: int, evals: dict[int, dict]) -> dict[int, str]:
        """At each evaluation, with a pruner: every live member's value reported, the pruner's verdicts back
        (``Events.decide``). Without one, nothing reads the values before the result: they go with it
        (``_tell``), one append a population instead of one an evaluation."""
        if self.opts.pruner is None:
            return {}
        self.search.report(step, {t: last.get(self.split, {}).get(self.metric, math.nan) for t, last in evals.items()})
        return {t: "pruned" for t in evals if self.search.should_prune(t, step)}

    def write_trials(self) -> None:
        """The trials table, when it differs from the one last written (a population's last checkpoint
        and its end record the same rows)."""
        table = records.trials_table(self.trials, self.recs, self.sp.swept, self.round_of)
        if self.written is not None and table.equals(self.written):
            return
        records.write_parquet(table, self.sweep_dir / "trials.parquet")
        self.written = table


def _probe(sp: Any, store: Store) -> tuple[grouping.Trial, dict[str, Any], int]:
    """A trial at the space's first values (its lows), its dataset and steps: what sizes a round and picks
    the selection metric before anything is asked."""
    point = {d.key: d.values[0] if d.finite else d.low for d in sp.space.dimensions}
    trial = grouping.make_trials(sp.base, sp.space, [point])[0]
    infos = {trial.cfg.data.name: ensure_dataset(store, trial.cfg.data.name)}
    (g,) = grouping.make_groups([trial], infos)
    return trial, infos, g.total_steps


def run_search(sp: Any, store: Store, opts: Any, rules: Rules) -> Searched:
    """Run (or resume) the search ``sp.strategy`` (``runner.ResolvedSweep``) in its sweep folder."""
    optuna = optuna_search.require(sp.strategy)  # without the extra: one line, before anything is written
    if opts.executor != "local":
        raise PipelineError(f"--strategy {sp.strategy} runs its populations in this process; --executor "
                            f"{opts.executor} runs grid and random sweeps")
    optuna_search.Encoding(optuna, sp.space)  # a space Optuna cannot hold: one line, nothing written
    if opts.refill:  # every asked trial in one population: a key that changes its program is refused now
        search_source.check_one_program(sp, store)
    budget = sp.count if sp.count is not None else strategy.DEFAULT_RANDOM_TRIALS
    check_budget(budget, opts.max_population)
    probe, infos, steps = _probe(sp, store)
    cfg, info = probe.cfg, infos[probe.cfg.data.name]
    per_member = grouping.member_bytes(create_state(cfg, info, steps)[1], cfg, info)
    size = round_size(budget, opts.max_population, grouping.population_size(per_member, None,
                                                                            opts.population_memory))
    rules.check_halving(opts, [grouping.Group(0, "", [0], total_steps=steps)], [probe])
    split, metric, higher = rules.selection(probe, infos)
    identity = {**sp.identity, "pruner": opts.pruner, "round_size": size}
    saved = folder.check_resumable(opts.sweep_dir, identity) if opts.sweep_dir else None
    if saved is not None:
        sweep_dir = opts.sweep_dir
    else:
        description = {**identity, "trials": budget, "chunks": [], "swept": sp.swept,
                       "selection": f"{split}/{metric}", "higher_is_better": higher,
                       "experiment_file": str(Path(sp.module.__file__).resolve())}
        sweep_dir = folder.create(opts.sweep_dir, opts.sweeps_root or folder.default_sweeps_root(), sp.name,
                                  description)
    search = optuna_search.OptunaSearch(sweep_dir, sp.strategy, opts.search_seed, higher, sp.space, startup=size,
                                        pruner_name=opts.pruner, eval_every=cfg.eval_every)
    # Member-steps: a resumed search's finished trials count on both sides (``sweep_work``).
    finished = records.read_records(sweep_dir / "trials.parquet")
    total, already = sweep_work([(steps, r.steps, True) for r in finished.values()]
                                + [(steps, 0, False)] * max(0, budget - len(finished)))
    with Progress(total, enabled=opts.show_progress, done=already) as progress, sigint_flag() as interrupted:
        done = [already]

        def on_progress(member_steps: int, loss: float) -> None:
            done[0] += member_steps
            progress.update(done[0], loss)

        if opts.refill:  # no rounds: one population whose freed slots ask the study (search_source.py)
            clock = SweepClock()
            ran = search_source.run_refill_search(sp, store, opts, sweep_dir, search, size, budget, split, metric,
                                                  interrupted, on_progress, clock)
            return Searched(sweep_dir, *ran, rounds=1, clock=clock)
        loop = RoundLoop(sp, store, opts, sweep_dir, search, size, budget, split, metric, interrupted, on_progress,
                         rules)
        rounds = loop.run()
    loop.write_trials()
    return Searched(sweep_dir, loop.trials, loop.recs, loop.groups, loop.plans, loop.infos or infos, rounds,
                    loop.clock)
