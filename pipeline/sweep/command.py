"""The ``pipeline sweep`` command's options and its printed output (parsing lives here, work in runner)."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.sweep.optuna_search import PRUNERS
from pipeline.sweep.plan_rule import MEASURE, PLANS, nothing_to_measure
from pipeline.sweep.strategy import CHOICES, PBT, SEARCHES


def _rungs(text: str) -> tuple[int, ...]:
    try:
        rungs = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of steps") from None
    return tuple(sorted(set(rungs)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="a name in experiments/ or a path to an experiment file")
    p.add_argument("overrides", nargs="*", metavar="KEY=SPACE",
                   help="choice(a;b) range(lo,hi[,step]) uniform(lo,hi) loguniform(lo,hi) linspace(lo,hi,n) "
                        "logspace(lo,hi,n), or a plain value (fixed)")
    p.add_argument("--strategy", choices=CHOICES, default=None,
                   help="grid: the cross product (default); random: --trials seeded samples; tpe, gp, cmaes, "
                        "qmc: an Optuna search (the optuna extra) that asks a population of trials a round, "
                        "trains it and tells it the validation results; pbt: population-based training")
    p.add_argument("--trials", type=int, default=None,
                   help="trials of a random search, or the budget of a search (default 16)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random strategy and of a search's sampler")
    p.add_argument("--pruner", choices=PRUNERS, default=None,
                   help="a search's Optuna pruner, which stops members at evaluations (status pruned): median or "
                        "hyperband (default: none)")
    p.add_argument("--refill", action="store_true",
                   help="a stopped member's slot takes the next trial inside its running population")
    p.add_argument("--sweep-dir", default=None, help="sweep folder; an existing one of the same sweep resumes")
    p.add_argument("--sweeps", default=None, help="sweeps root (default ./sweeps or $PIPELINE_SWEEPS)")
    p.add_argument("--plan", choices=PLANS, default=None,
                   help="how each group runs: population (vmapped), sequential (one member at a time), auto "
                        "(default: from the hardware and the work, never timed) or auto-measure (time both on "
                        "the first population); recorded in sweep.json and kept by a resumed sweep")
    p.add_argument("--vmap", action="store_true", help="--plan population")
    p.add_argument("--no-vmap", action="store_true", help="--plan sequential")
    p.add_argument("--max-population", type=int, default=None,
                   help="most members in one compiled population; a search asks this many trials a round "
                        "(default: min(the population that fits --population-memory, max(2, ceil(trials/4))))")
    p.add_argument("--population-memory", default="2G",
                   help="device memory budget of one population, e.g. 512M or 8G (an estimate; default 2G)")
    p.add_argument("--rungs", type=_rungs, default=(), metavar="STEP,STEP",
                   help="successive halving: at these evaluation steps the worst members stop")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of a population kept at each rung")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: one Ray task a population, over a Ray cluster "
                        "(the ray extra)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="a running Ray cluster (auto, HOST:PORT or ray://HOST:PORT; default: start one here)")
    p.add_argument("--ray-gpus", type=float, default=0.0, metavar="N",
                   help="GPUs each population's Ray task asks for (default 0)")
    p.add_argument("--ray-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the Ray cluster to answer, and for the first population's task to "
                        "start (default 30)")
    p.add_argument("--top", type=int, default=10, help="trials shown in the table at the end")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.add_argument("--no-progress", action="store_true")


def check_numbers(args: argparse.Namespace) -> None:
    """Every number of the command line in range, before anything is loaded or built."""
    from pipeline.sweep.strategy import MAX_TRIALS

    if args.trials is not None and args.trials < 1:
        raise PipelineError(f"bad value for '--trials': {args.trials} must be at least 1")
    if args.trials is not None and args.trials > MAX_TRIALS:
        raise PipelineError(f"bad value for '--trials': {args.trials} is more than the {MAX_TRIALS} trials a sweep "
                            "may have")
    if not 0 <= args.search_seed < 2**63:
        raise PipelineError(f"bad value for '--search-seed': {args.search_seed} must be between 0 and 2**63 - 1")
    if args.max_population is not None and not 1 <= args.max_population <= MAX_TRIALS:
        raise PipelineError(f"bad value for '--max-population': {args.max_population} must be at least 1"
                            + (f" and at most {MAX_TRIALS}" if args.max_population > MAX_TRIALS else ""))
    if not (math.isfinite(args.keep) and 0.0 < args.keep < 1.0):
        raise PipelineError(f"bad value for '--keep': {args.keep} must be between 0 and 1")
    bad = [r for r in args.rungs if r < 1]
    if bad:
        raise PipelineError(f"bad value for '--rungs': {bad[0]} must be a positive step")
    if args.strategy in SEARCHES and args.trials is not None and args.max_population and \
            args.trials < args.max_population:
        raise PipelineError(f"bad value for '--trials': {args.trials} is less than one population (--max-population "
                            f"{args.max_population}); a search asks a whole population at a time")
    if args.strategy in SEARCHES and args.executor != "local":
        raise PipelineError(f"--strategy {args.strategy} runs its populations in this process; --executor "
                            f"{args.executor} runs grid and random sweeps")
    if args.top < 0:
        raise PipelineError(f"bad value for '--top': {args.top} must not be negative")
    if args.executor != "ray" and (args.ray_address is not None or args.ray_gpus or args.ray_timeout is not None):
        flag = ("--ray-address" if args.ray_address is not None else "--ray-gpus" if args.ray_gpus
                else "--ray-timeout")
        raise PipelineError(f"{flag} needs --executor ray")
    if args.ray_timeout is not None and not (math.isfinite(args.ray_timeout) and args.ray_timeout > 0):
        raise PipelineError(f"bad value for '--ray-timeout': {args.ray_timeout} must be a finite number of seconds "
                            "above 0")
    if not (math.isfinite(args.ray_gpus) and args.ray_gpus >= 0):
        raise PipelineError(f"bad value for '--ray-gpus': {args.ray_gpus} must not be negative")
    population_bytes(args.population_memory)


def chosen_plan(args: argparse.Namespace) -> str:
    """``--plan``, or ``--vmap``/``--no-vmap`` (its old spellings); two that differ: one line."""
    given = [(flag, plan) for flag, plan in (("--vmap", "population"), ("--no-vmap", "sequential"))
             if getattr(args, flag[2:].replace("-", "_"))]
    if getattr(args, "plan", None) is not None:
        given.insert(0, (f"--plan {args.plan}", args.plan))
    if len({plan for _, plan in given}) > 1:
        raise PipelineError(f"{given[0][0]} and {given[1][0]} contradict each other; give one")
    plan = given[0][1] if given else "auto"
    if plan == MEASURE and (args.strategy in SEARCHES or args.strategy == PBT or args.refill):
        raise nothing_to_measure("--refill" if args.refill else f"--strategy {args.strategy}")
    return plan


def population_bytes(text: str) -> int:
    """``--population-memory``: a finite, positive size (``nan``, ``inf`` and ``-1G`` are refused)."""
    from pipeline.sweep.grouping import parse_bytes

    stripped = text.strip().lower()
    if any(word in stripped for word in ("nan", "inf")):
        raise PipelineError(f"bad value for '--population-memory': {text!r} is not a size like 512M or 2G")
    try:
        value = parse_bytes(text)
    except (ValueError, OverflowError):
        raise PipelineError(f"bad value for '--population-memory': {text!r} is not a size like 512M or 2G") from None
    if value > 2**60:
        raise PipelineError(f"bad value for '--population-memory': {text!r} is more than an exabyte")
    return value


def run_from_args(args: argparse.Namespace, store, enable_cache: Callable) -> int:
    from pipeline.sweep.report import show_sweep

    summary = sweep_from_args(args, store, enable_cache)
    print(show_sweep(Path(summary["sweep_dir"]), top=args.top))
    print(f"sweep folder: {summary['sweep_dir']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def sweep_from_args(args: argparse.Namespace, store, enable_cache: Callable | None = None,
                    hooks: Callable[[int], list] | None = None) -> dict:
    """Check the parsed command line, run (or resume) the sweep, return its summary: the command's
    work, shared by ``pipeline sweep`` and ``pipeline.sweep(...)`` (``python.py``, which also passes
    ``hooks``: each trial's own ``pipeline.Hook`` objects, by trial id)."""
    from pipeline.durable.folder_locks import folder_lock
    from pipeline.sweep.folder import is_empty_dir, is_sweep_dir
    from pipeline.sweep.runner import SweepOptions, run_sweep

    plan = chosen_plan(args)
    check_numbers(args)
    if args.executor == "ray":
        from pipeline.sweep.ray_executor import require

        require()  # without the extra: one line, before anything is loaded
    if args.strategy in SEARCHES:
        from pipeline.sweep.optuna_search import require as require_optuna

        require_optuna(args.strategy)  # without the extra: one line, before anything is loaded
    opts = SweepOptions(
        strategy=args.strategy, trials=args.trials, search_seed=args.search_seed,
        sweep_dir=Path(args.sweep_dir) if args.sweep_dir else None,
        sweeps_root=Path(args.sweeps) if args.sweeps else None,
        plan=plan, vmap={"population": True, "sequential": False}.get(plan),  # vmap: a forced plan, or None
        max_population=args.max_population,
        population_memory=population_bytes(args.population_memory), rungs=args.rungs, keep=args.keep,
        show_progress=not args.no_progress, executor=args.executor, ray_address=args.ray_address,
        ray_gpus=args.ray_gpus,
        ray_timeout=SweepOptions.ray_timeout if args.ray_timeout is None else args.ray_timeout,
        pruner=args.pruner, refill=args.refill, hooks=hooks,
    )
    if enable_cache is not None:
        enable_cache(args)
    run = run_sweep
    if opts.strategy == PBT:
        from pipeline.sweep.pbt_run import run_pbt as run
    if opts.sweep_dir is not None and (is_sweep_dir(opts.sweep_dir) or is_empty_dir(opts.sweep_dir)):
        # An existing folder is locked before anything is loaded: a second sweep into it stops at once.
        with folder_lock(opts.sweep_dir, "sweep folder"):
            return run(args.experiment, list(args.overrides), store, opts)
    return run(args.experiment, list(args.overrides), store, opts)
