"""``pipeline sweep --strategy pbt``: one population of random trials, exploited and explored as it trains.

The trials are drawn as a random search draws them (``--trials N``, ``--search-seed``) and must be
one population: every swept key traced (so one compiled program), and N members within
``--max-population`` and ``--population-memory``. Each is refused in one line before the sweep
folder is made. The population then runs as any other (``PopulationRun``), with the PBT
controller (``pbt.py``) at each evaluation; the folder is an ordinary sweep folder plus the
lineage ``pbt.parquet``, and ``trials.parquet`` holds each member's final hyperparameters.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, is_switch, traced_fields
from pipeline.data import Store
from pipeline.durable.files import write_json
from pipeline.errors import PipelineError
from pipeline.signals import sigint_flag
from pipeline.sweep import folder, grouping, plan_rule, records, runner
from pipeline.sweep.pbt import PBT, PBTOptions, getattr_dotted, split_pbt_args
from pipeline.sweep.population_run import GroupRun, Halving, PopulationRun
from pipeline.sweep.timing import SweepClock
from pipeline.track.background import plot_later
from pipeline.track.progress import Progress, sweep_work
from pipeline.train.exploit import INHERITED, hyperparameter_leaves
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs, vmapped_programs
from pipeline.train.state import create_state


def check_traced(sp: runner.ResolvedSweep) -> None:
    """Every swept key traced, and the trials one group: else PBT could not move a member's value."""
    traced = traced_fields(sp.base)
    for key in sp.swept:
        if key not in traced:
            raise ConfigError(f"PBT over a key that is not traced: '{key}' is part of the compiled program, so "
                              "members cannot change it while they train; sweep traced keys (learning rate, "
                              f"weight decay, dropout, ...) or fix it with {key}=VALUE")
    if len(sp.groups) > 1:
        for key in sp.swept:
            sides = {t.values[key] > 0 for t in sp.trials}
            if is_switch(traced[key]) and len(sides) > 1:
                raise ConfigError(f"PBT over '{key}' needs all its values above 0 or all 0 (0 turns that part of "
                                  "the program off, so the trials would be several populations)")
        raise ConfigError(f"PBT needs its trials in one population, but they make {len(sp.groups)} compiled "
                          "programs (a seed swept with data.validation_fraction > 0 holds out other rows)")


def check_interval(opts: PBTOptions, eval_every: int, total: int) -> PBTOptions:
    interval = opts.interval or eval_every
    if interval % eval_every or interval >= total:
        raise ConfigError(f"bad value for 'pbt.interval': {interval} must be an evaluation step (a multiple of "
                          f"eval_every={eval_every}) below the run's {total} steps")
    return replace(opts, interval=interval)


def check_fits(opts: runner.SweepOptions, count: int, per_member: int) -> None:
    cap = grouping.population_size(per_member, opts.max_population, opts.population_memory)
    if count > cap:
        why = (f"--max-population {opts.max_population}" if opts.max_population and opts.max_population < count
               else f"--population-memory of {opts.population_memory / 1024**2:.0f} MiB at about "
                    f"{per_member / 1024**2:.1f} MiB a member")
        raise ConfigError(f"PBT trains its {count} trials as one population, but {why} holds at most {cap}; "
                          "use fewer --trials or a larger budget")


def run_pbt(experiment: str, args: list[str], store: Store, opts: runner.SweepOptions) -> dict[str, Any]:
    """Run (or resume) a PBT sweep; returns the summary (also in ``SWEEP_DIR/summary.json``)."""
    runner.check_one_process()
    started = time.time()
    pbt_opts, space_args = split_pbt_args(args)
    if opts.executor != "local":
        raise PipelineError("--strategy pbt runs its one population in this process; leave out --executor ray")
    if opts.rungs:
        raise PipelineError("--rungs and --strategy pbt contradict each other: PBT replaces its worst members "
                            "instead of stopping them")
    sp = runner.resolve_sweep(experiment, space_args, store, replace(opts, strategy="random"))
    check_traced(sp)
    trials, g = sp.trials, sp.groups[0]
    cfg = trials[0].cfg
    info = sp.infos[cfg.data.name]
    pbt_opts = check_interval(pbt_opts, cfg.eval_every, g.total_steps)
    _, state = create_state(cfg, info, g.total_steps)
    check_fits(opts, len(trials), grouping.member_bytes(state, cfg, info))
    leaves = hyperparameter_leaves(state, cfg, info, sp.swept)
    for key, found in leaves.items():
        if not found and key not in INHERITED and getattr_dotted(cfg, key) != 0:
            raise ConfigError(f"PBT cannot change '{key}' inside the compiled program: no value of the train state "
                              "holds it (keep a model's traced field in a pipeline.models.Hyperparameter)")
    identity = {**sp.identity, "strategy": "pbt"}
    g.chunks = [list(g.trials)]
    saved = folder.check_resumable(opts.sweep_dir, identity) if opts.sweep_dir else None
    if saved is not None and saved.get("pbt") != pbt_opts.record():
        raise ConfigError(f"sweep folder {opts.sweep_dir} was made by a different sweep (pbt: {saved.get('pbt')} -> "
                          f"{pbt_opts.record()}); use another --sweep-dir")
    split, metric, higher = runner.selection(trials[0], sp.infos)
    if saved is not None:
        sweep_dir = opts.sweep_dir
    else:
        description = {**identity, "trials": len(trials), "chunks": g.chunks, "swept": sp.swept,
                       "selection": f"{split}/{metric}", "higher_is_better": higher, "pbt": pbt_opts.record(),
                       "experiment_file": str(Path(sp.module.__file__).resolve())}
        sweep_dir = folder.create(opts.sweep_dir, opts.sweeps_root or folder.default_sweeps_root(), sp.name,
                                  description)
    recs = {t.id: records.TrialRecord() for t in trials}
    recs.update(records.read_records(sweep_dir / "trials.parquet"))

    def write_trials() -> None:
        records.write_parquet(records.trials_table(trials, recs, sp.swept), sweep_dir / "trials.parquet")

    prep = prepare(cfg, store, steps_per_call=g.steps_per_call)
    recorded = (saved or {}).get("plans", {}).get(str(g.id))
    vmap, plan = plan_rule.fixed_plan(opts, recorded, prep, len(g.trials), "--strategy pbt", why="pbt")
    plans = {str(g.id): plan}
    runner.record_plans(sweep_dir, plans)
    controller = PBT(pbt_opts, sp.space, sp.base, trials, g.trials, leaves, prep.selection, g.total_steps,
                     opts.search_seed, sweep_dir)
    unfinished = any(recs[t].status not in records.FINISHED for t in g.trials)
    if not unfinished:
        controller.final_from_lineage()
    write_trials()
    clock = SweepClock()
    try:
        if unfinished:
            _run_population(g, prep, trials, recs, sweep_dir, opts, controller, vmap, write_trials, sp.name, clock)
    finally:
        if prep.reader is not None:
            prep.reader.close()
    wall = time.time() - started
    summary = runner.summarize(sweep_dir, sp.name, trials, recs, sp.swept, sp.groups, wall, vmap, sp.infos)
    summary["plans"], summary["timing"] = plans, clock.record(wall)
    summary["pbt"] = {**pbt_opts.record(), "lineage": str(sweep_dir / "pbt.parquet")}
    write_json(sweep_dir / "summary.json", summary)
    if sp.plots:
        plot_later(sweep_dir)
    return summary


def _run_population(g: grouping.Group, prep, trials: list[grouping.Trial], recs: dict, sweep_dir: Path,
                    opts: runner.SweepOptions, controller: PBT, vmap: bool, write_trials, name: str,
                    clock: SweepClock) -> None:
    import jax

    members = list(g.trials)
    seed_slots = len({trials[t].cfg.resolved_data_seed for t in members})
    make = vmapped_programs if vmap else solo_programs
    programs = make(prep.spec, g.steps_per_call, stream=prep.reader is not None)
    size = -(-len(members) // jax.device_count()) * jax.device_count() if vmap else len(members)
    total, already = sweep_work((g.total_steps, recs[t].steps, recs[t].status in records.FINISHED) for t in members)
    with Progress(total, enabled=opts.show_progress, done=already) as progress, sigint_flag() as interrupted:
        done = [already]

        def on_progress(member_steps: int, loss: float) -> None:
            done[0] += member_steps
            progress.update(done[0], loss)

        run = GroupRun(g, prep, programs, vmap, trials, recs, sweep_dir / "checkpoints", Halving(), interrupted,
                       write_trials, on_progress, seed_slots, name, at_evaluation=controller.at_evaluation,
                       search_state=controller.search_state, on_start=controller.on_start,
                       hooks=opts.hooks)
        population = PopulationRun(run, 0, members, size)
        population.execute()
        clock.population_ended(population.engine)
    controller.write()
    records.merge_curves(sweep_dir / "curves.parquet", population.curves(), population.folder.name)
    write_trials()
    population.forget_metrics()
