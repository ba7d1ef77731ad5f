"""``pipeline sweep``: space -> trials -> groups -> populations, recorded in a sweep folder.

Everything that can be wrong with the input is checked before the folder is created or
touched. Groups run one after another; each group's populations share one compiled
program (padded to one size); a resumed sweep skips finished trials and continues its
populations from their checkpoints.

``--executor ray`` (``ray_executor.py``) runs the same populations as Ray tasks, one
population a task, on the machines of a Ray cluster: each task plans the sweep again from the
same inputs (so it builds the same trials), runs its population with ``run_group``,
checkpointing into the shared sweep folder, and hands its records and curves back; this
process (the driver) merges them and writes the tables.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from pipeline import distributed
from pipeline.config import ConfigError, apply_overrides, to_dict
from pipeline.data import Store, ensure_dataset
from pipeline.durable.files import remove_path, write_json
from pipeline.durable.records import read_json
from pipeline.errors import PipelineError
from pipeline.experiments import experiment_name, load_module
from pipeline.objectives import resolve
from pipeline.signals import sigint_flag
from pipeline.sweep import folder, grouping, plan_probe, plan_rule, records, rounds, strategy
from pipeline.sweep.population_run import GroupRun, Halving, PopulationRun
from pipeline.sweep.refill import run_refill_group
from pipeline.sweep.space import Space, SpaceError, parse_space
from pipeline.sweep.timing import SweepClock
from pipeline.track.background import plot_later
from pipeline.track.progress import Progress, sweep_work
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs, vmapped_programs
from pipeline.train.selection import selection as select
from pipeline.train.state import create_state


@dataclass
class SweepOptions:
    strategy: str | None = None  # None: the experiment's sweep() choice, else grid
    trials: int | None = None
    search_seed: int = 0
    sweep_dir: Path | None = None
    sweeps_root: Path | None = None
    vmap: bool | None = None  # True/False: a forced plan (--vmap/--no-vmap); None: ``plan`` decides
    plan: str = "auto"  # auto | auto-measure | population | sequential (plan_rule.py)
    max_population: int | None = None
    population_memory: int = grouping.DEFAULT_POPULATION_BYTES
    rungs: tuple[int, ...] = ()
    keep: float = 0.5
    show_progress: bool = True
    executor: str = "local"  # local: this process; ray: a Ray task a population (ray_executor.py)
    ray_address: str | None = None  # a running Ray cluster (None: start one on this machine)
    ray_gpus: float = 0.0  # GPUs each population's task asks Ray for
    ray_timeout: float = 30.0  # seconds to reach the cluster, and for its first task to start
    pruner: str | None = None  # a search's pruner (optuna_search.PRUNERS); None: members run to the end
    hooks: Callable[[int], list] | None = None  # each trial's own hooks, by trial id (``pipeline.sweep(hooks=)``)
    refill: bool = False  # a stopped member's slot takes the next trial (refill.py, search_source.py)


def resolve_space(module: Any, base, args: list[str]) -> tuple[Space, dict[str, Any]]:
    """The command line's space; or, when it sweeps nothing, the experiment's ``sweep()`` plus its fixed values."""
    cli = parse_space(base, args)
    if cli.dimensions or not hasattr(module, "sweep"):
        return cli, {}
    declared = module.sweep()
    settings = {k: declared[k] for k in ("strategy", "trials") if isinstance(declared, dict) and "space" in declared
                and k in declared}
    items = declared["space"] if isinstance(declared, dict) and "space" in declared else declared
    if not isinstance(items, dict):
        raise SpaceError(f"sweep() of the experiment must return a dict of KEY -> SPACE, not {type(items).__name__}")
    return parse_space(base, [f"{k}={v}" for k, v in items.items()] + list(cli.fixed)), settings


def check_halving(opts: SweepOptions, groups: list[grouping.Group], trials: list[grouping.Trial]) -> None:
    if opts.rungs and not 0.0 < opts.keep < 1.0:
        raise ConfigError(f"bad value for '--keep': {opts.keep} must be between 0 and 1")
    for g in groups:
        cfg = trials[g.trials[0]].cfg
        for rung in opts.rungs:
            if not 0 < rung < g.total_steps or rung % cfg.eval_every:
                raise ConfigError(f"bad value for '--rungs': {rung} must be an evaluation step (a multiple of "
                                  f"eval_every={cfg.eval_every}) between 0 and the run's {g.total_steps} steps")


@dataclass
class ResolvedSweep:
    """Everything a sweep's inputs decide, before its folder is touched: the same on every machine."""

    name: str
    base: Any
    space: Space
    strategy: str
    count: int | None
    trials: list[grouping.Trial]
    infos: dict[str, Any]
    groups: list[grouping.Group]
    identity: dict[str, Any]
    module: Any

    @property
    def swept(self) -> list[str]:
        return [d.key for d in self.space.dimensions]

    @property
    def plots(self) -> bool:
        """Whether the finished sweep draws its plots: ``plot`` with the command's fixed values applied
        (``plot=false`` on the command line; ``base`` is the experiment's own config)."""
        return bool(apply_overrides(self.base, list(self.space.fixed)).plot)


def resolve_sweep(experiment: str, args: list[str], store: Store, opts: SweepOptions) -> ResolvedSweep:
    """The trials, groups and identity of a sweep (every input checked; nothing written)."""
    module = load_module(experiment)
    name = experiment_name(experiment)
    base = apply_overrides(module.config(), [])
    space, declared = resolve_space(module, base, args)
    strategy_name = opts.strategy or declared.get("strategy", "grid")
    count = opts.trials if opts.trials is not None else declared.get("trials")
    if opts.pruner is not None and strategy_name not in strategy.SEARCHES:
        raise ConfigError(f"--pruner {opts.pruner} needs a search: --strategy {', '.join(strategy.SEARCHES)}")
    if strategy_name in strategy.SEARCHES:  # asked round by round (rounds.py), not made up front
        strategy.check_space(space, count)
        points = []
    else:
        points = strategy.trials(space, strategy_name, count, opts.search_seed)
    trials = grouping.make_trials(base, space, points)
    infos = {}
    for t in trials:
        if t.cfg.data.name not in infos:
            infos[t.cfg.data.name] = ensure_dataset(store, t.cfg.data.name)
    groups = grouping.make_groups(trials, infos)
    check_halving(opts, groups, trials)
    grouping.check_programs(groups, trials, infos)
    identity = json.loads(json.dumps({
        "experiment": name, "base_config": to_dict(base), "space": space.spelling(), "strategy": strategy_name,
        "trials_requested": count, "search_seed": opts.search_seed, "rungs": list(opts.rungs),
        "keep": opts.keep if opts.rungs else None, "refill": opts.refill,
    }))
    return ResolvedSweep(name, base, space, strategy_name, count, trials, infos, groups, identity, module)


def check_refill(opts: SweepOptions) -> None:
    if opts.refill and opts.executor == "ray":
        raise ConfigError("--refill runs a group as one population in this process; it cannot run with "
                          "--executor ray")
    if opts.refill and opts.strategy == "pbt":
        raise ConfigError("--refill and --strategy pbt both replace members of a running population; give one")


def check_one_process() -> None:
    """A sweep runs in one process (its populations over this machine's devices), or over a Ray cluster."""
    if distributed.joined() and distributed.process_count() > 1:
        raise PipelineError(f"pipeline sweep runs in one process, not {distributed.process_count()} joined by "
                            "jax.distributed; run it without pipeline launch (a machine's devices split each "
                            "population), or over machines with --executor ray (one population a task)")


def run_sweep(experiment: str, args: list[str], store: Store, opts: SweepOptions) -> dict[str, Any]:
    """Run (or resume) a sweep; returns the summary object (also in ``SWEEP_DIR/summary.json``)."""
    check_one_process()
    check_refill(opts)
    started = time.time()
    ray = None
    if opts.executor == "ray":
        from pipeline.sweep import ray_executor

        ray = ray_executor.require()  # without the extra: one line, before anything is planned or written
        ray_executor.connect(ray, opts)  # a cluster that does not answer, or cannot run a task: no folder
    sp = resolve_sweep(experiment, args, store, opts)
    if sp.strategy in strategy.SEARCHES:
        return run_search(sp, store, opts, started)
    trials, infos, groups, identity, module = sp.trials, sp.infos, sp.groups, sp.identity, sp.module
    name, space = sp.name, sp.space
    saved = folder.check_resumable(opts.sweep_dir, identity) if opts.sweep_dir else None
    if saved is not None:
        sweep_dir = opts.sweep_dir
        for g, chunks in zip(groups, saved["chunks"]):
            g.chunks = chunks
    else:
        for g in groups:
            cfg = trials[g.trials[0]].cfg
            info = infos[cfg.data.name]
            per_member = grouping.member_bytes(create_state(cfg, info, g.total_steps)[1], cfg, info)
            g.chunks = grouping.chunk(g.trials, grouping.population_size(per_member, opts.max_population,
                                                                  opts.population_memory))
        split, metric, higher = selection(trials[0], infos)
        description = {**identity, "trials": len(trials), "chunks": [g.chunks for g in groups],
                       "swept": [d.key for d in space.dimensions], "selection": f"{split}/{metric}",
                       "higher_is_better": higher, "experiment_file": str(Path(module.__file__).resolve())}
        sweep_dir = folder.create(opts.sweep_dir, opts.sweeps_root or folder.default_sweeps_root(), name,
                                  description)
    swept = [d.key for d in space.dimensions]
    recs = {t.id: records.TrialRecord() for t in trials}
    recs.update(records.read_records(sweep_dir / "trials.parquet"))

    def write_trials() -> None:
        records.write_parquet(records.trials_table(trials, recs, swept), sweep_dir / "trials.parquet")

    write_trials()
    saved_plans = dict((saved or {}).get("plans", {}))
    plans: dict[str, dict[str, Any]] = dict(saved_plans)  # by group id: what ran it and why
    # Member-steps: finished trials' count on both sides; a resumed population adds its members' steps so far.
    todo, done = sweep_work((g.total_steps, recs[t].steps, recs[t].status in records.FINISHED)
                            for g in groups for t in g.trials)
    clock = SweepClock()
    with Progress(todo, enabled=opts.show_progress, done=done) as progress, sigint_flag() as interrupted:
        done_steps = [done]

        def on_progress(member_steps: int, loss: float) -> None:
            done_steps[0] += member_steps
            progress.update(done_steps[0], loss)

        if ray is not None:
            runner = ray_executor.Runner(SweepOptions, resolve_sweep, run_group, record_population, record_plans)
            ray_executor.run_populations(ray, experiment, args, store, opts, sweep_dir, groups, recs, plans,
                                         interrupted, write_trials, on_progress, runner)
        for g in groups if ray is None else []:
            chunks = [c for c in g.chunks if any(recs[t].status not in records.FINISHED for t in c)]
            if not chunks:
                continue
            prep = prepare(trials[g.trials[0]].cfg, store, steps_per_call=g.steps_per_call)
            try:
                if opts.refill:  # the whole group as one population whose stopped slots take the next trials
                    run_refill_group(g, prep, trials, recs, sweep_dir, opts, plans, interrupted, write_trials,
                                     on_progress, name, clock=clock)
                    record_plans(sweep_dir, plans)
                else:
                    run_group(g, prep, trials, chunks, recs, sweep_dir, opts, plans, saved_plans, interrupted,
                              write_trials, on_progress, name, clock=clock)
            finally:
                if prep.reader is not None:
                    prep.reader.close()
    vmapped = any(p["plan"] == "population" for p in plans.values())
    wall = time.time() - started
    summary = summarize(sweep_dir, name, trials, recs, swept, groups, wall, vmapped, infos)
    summary["plans"] = plans
    if ray is None:
        summary["timing"] = clock.record(wall)
    write_json(sweep_dir / "summary.json", summary)
    if sp.plots:
        plot_later(sweep_dir)
    return summary


def run_search(sp: ResolvedSweep, store: Store, opts: SweepOptions, started: float) -> dict[str, Any]:
    """A search (``--strategy tpe|gp|cmaes|qmc``): asked, trained and told round by round (``rounds.py``)."""
    done = rounds.run_search(sp, store, opts, rounds.Rules(selection, check_halving))
    vmapped = any(p["plan"] == "population" for p in done.plans.values())
    wall = time.time() - started
    summary = summarize(done.sweep_dir, sp.name, done.trials, done.recs, sp.swept, done.groups, wall, vmapped,
                        done.infos)
    summary["plans"], summary["rounds"], summary["timing"] = done.plans, done.rounds, done.clock.record(wall)
    write_json(done.sweep_dir / "summary.json", summary)
    if sp.plots:
        plot_later(done.sweep_dir)
    return summary


def record_population(sweep_dir: Path, key: str, curves: Any, write_trials) -> None:
    """A finished population's curves merged into ``curves.parquet``, the trials table rewritten,
    and the population's own metrics folder removed (what the driver does with a task's result)."""
    records.merge_curves(sweep_dir / "curves.parquet", curves, key)
    write_trials()
    remove_path(sweep_dir / "checkpoints" / f"{key}.metrics")


def record_plans(sweep_dir: Path, plans: dict[str, dict[str, Any]]) -> None:
    write_json(sweep_dir / folder.SWEEP_FILE, {**read_json(sweep_dir / folder.SWEEP_FILE), "plans": plans})


def run_group(g: grouping.Group, prep, trials: list[grouping.Trial], chunks: list[list[int]], recs: dict,
              sweep_dir: Path, opts: SweepOptions, plans: dict, saved_plans: dict, interrupted: dict,
              write_trials, on_progress, name: str,
              on_population: Callable[[Any], None] | None = None, clock: SweepClock | None = None) -> None:
    """Every unfinished population of group ``g``, one after another, with one compiled program.

    ``on_population(population)`` is called as each one ends (default: its curves merged and the
    trials table written, ``record_population``); a Ray task hands its results back instead,
    and leaves ``sweep.json`` (the group's plan) to the driver.
    """
    seed_slots = max(len({trials[t].cfg.resolved_data_seed for t in c}) for c in g.chunks)

    probed = [0]  # member-steps the plan probe's population counted: gone if it is abandoned

    def probe_progress(member_steps: int, loss: float) -> None:
        probed[0] += member_steps
        on_progress(member_steps, loss)

    def group_run(vmap: bool, programs: Any = None, progress: Callable = on_progress) -> tuple[GroupRun, int]:
        if programs is None:
            make = vmapped_programs if vmap else solo_programs
            programs = make(prep.spec, g.steps_per_call, stream=prep.reader is not None)
        run = GroupRun(g, prep, programs, vmap, trials, recs, sweep_dir / "checkpoints",
                       Halving(tuple(opts.rungs), opts.keep), interrupted, write_trials, progress, seed_slots,
                       name, hooks=opts.hooks)
        size = max(len(c) for c in g.chunks)
        if vmap:  # a multiple of the devices, so each device steps its own members
            size = -(-size // jax.device_count()) * jax.device_count()
        return run, size

    vmap = decided_plan(g, chunks[0], opts, plans, prep)
    first: PopulationRun | None = None  # the first population, already started by the plan probe
    if vmap is None:  # measured on the first population, which goes on when the population wins
        run, size = group_run(True, progress=probe_progress)
        first = PopulationRun(run, g.chunks.index(chunks[0]), chunks[0], size)
        try:
            measured = plan_probe.measure(prep, first, [trials[t].cfg for t in chunks[0]], g.steps_per_call,
                                      g.total_steps, len(g.trials) * g.total_steps)
        except BaseException:  # failed or interrupted while probed: its files closed, as execute() closes them
            first.close()
            raise
        plans[str(g.id)] = {**measured.record(), "forced": False}
        if not measured.vmap:
            first.abandon()
            on_progress(-probed[0], float("nan"))  # its steps are trained again, one member at a time
            first = None
            run, size = group_run(False, measured.programs)
    else:
        run, size = group_run(vmap)
    if on_population is None and str(g.id) not in saved_plans:
        record_plans(sweep_dir, plans)
    clock = clock or SweepClock()  # (a Ray task's: not reported)
    for index, members in enumerate(g.chunks):
        if members not in chunks:
            continue
        population = first if first is not None and members == chunks[0] else PopulationRun(run, index, members, size)
        clock.population_starts()
        population.execute()
        clock.population_ended(population.engine)
        if on_population is not None:
            on_population(population)
            continue
        records.merge_curves(sweep_dir / "curves.parquet", population.curves(), population.folder.name)
        write_trials()
        population.forget_metrics()


def decided_plan(g: grouping.Group, members: list[int], opts: SweepOptions, plans: dict[str, dict[str, Any]],
                 prep: Any = None) -> bool | None:
    """Whether group ``g`` runs as vmapped populations (``plan_rule.py``): the plan a resumed or re-run
    sweep recorded (a forced ``--plan`` that contradicts it: one line), a forced one (``--plan
    population|sequential``, ``--vmap``/``--no-vmap``), one member (sequential), or ``--plan auto``'s
    rule from the hardware and the work. None: ``--plan auto-measure``, timed on the first population."""
    key = str(g.id)
    asked = plan_rule.requested(opts)
    if key in plans:
        plan_rule.check_recorded({key: plans[key]}, opts, opts.sweep_dir)
        return plans[key]["plan"] == "population"
    if asked in plan_rule.FORCED:
        plans[key] = {"plan": asked, "forced": True}
        return asked == "population"
    if len(members) == 1:
        plans[key] = {"plan": "sequential", "forced": False, "why": "one member"}
        return False
    if asked == plan_rule.MEASURE:
        return None
    vmap, plans[key] = plan_rule.decide_auto(prep, len(members))
    return vmap


def selection(trial: grouping.Trial, infos: dict) -> tuple[str, str, bool]:
    """The split and metric that rank trials (the rule a run selects its best checkpoint by), and
    whether higher is better: validation, or test only when ``selection.split=test`` asks for it."""
    info = infos[trial.cfg.data.name]
    chosen = select(trial.cfg, info, resolve(trial.cfg, info), ranks=True)  # no validation split: refused
    return chosen.split, chosen.metric, chosen.higher


def summarize(sweep_dir: Path, name: str, trials: list[grouping.Trial], recs: dict[int, records.TrialRecord],
              swept: list[str], groups: list[grouping.Group], wall: float, vmap: bool, infos: dict) -> dict[str, Any]:
    split, metric, higher = selection(trials[0], infos)
    sign = 1.0 if higher else -1.0
    candidates = [t for t in trials if recs[t.id].status in ("done", "early_stopped")
                  and not math.isnan(recs[t.id].last_eval.get(split, {}).get(metric, math.nan))]
    statuses: dict[str, int] = {}
    for rec in recs.values():
        statuses[rec.status] = statuses.get(rec.status, 0) + 1
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir), "experiment": name, "trials": len(trials),
        "finished": sum(recs[t.id].status in records.FINISHED for t in trials), "status": statuses,
        "groups": len(groups), "populations": sum(len(g.chunks) for g in groups), "vmap": vmap,
        "selection": f"{split}/{metric}", "wall_s": round(wall, 3), "best": None,
    }
    if split == "test":  # selection.split=test: the ranking read test, so its test metrics flatter the best
        info = infos[trials[0].cfg.data.name]
        summary["selection_flag"] = select(trials[0].cfg, info, resolve(trials[0].cfg, info)).record()["flag"]
    if candidates:
        best = max(candidates, key=lambda t: (sign * recs[t.id].last_eval[split][metric], -t.id))
        rec = recs[best.id]
        summary["best"] = {
            "trial": best.id, "group": best.group, "status": rec.status,
            "hyperparameters": {k: best.values[k] for k in swept},
            "overrides": best.overrides,
            "metrics": {f"{s}/{n}": v for s, m in rec.last_eval.items() for n, v in m.items()},
            "best_metrics": {f"{s}/{n}": v for s, m in rec.best_eval.items() for n, v in m.items()},
            "best_step": rec.best_step, "steps": rec.steps,
        }
    return summary

