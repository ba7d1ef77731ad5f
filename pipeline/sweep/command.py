"""The ``pipeline sweep`` command's options and its printed output (parsing lives here, work in runner)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError


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
    p.add_argument("--strategy", choices=("grid", "random"), default=None,
                   help="grid: the cross product (default); random: --trials seeded samples")
    p.add_argument("--trials", type=int, default=None, help="trials of a random search (default 16)")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the random strategy")
    p.add_argument("--sweep-dir", default=None, help="sweep folder; an existing one of the same sweep resumes")
    p.add_argument("--sweeps", default=None, help="sweeps root (default ./sweeps or $PIPELINE_SWEEPS)")
    p.add_argument("--no-vmap", action="store_true", help="run the trials one at a time with the solo programs")
    p.add_argument("--max-population", type=int, default=None, help="most members in one compiled population")
    p.add_argument("--population-memory", default="2G",
                   help="device memory budget of one population, e.g. 512M or 8G (an estimate; default 2G)")
    p.add_argument("--rungs", type=_rungs, default=(), metavar="STEP,STEP",
                   help="successive halving: at these evaluation steps the worst members stop")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of a population kept at each rung")
    p.add_argument("--top", type=int, default=10, help="trials shown in the table at the end")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.add_argument("--no-progress", action="store_true")


def run_from_args(args: argparse.Namespace, store, enable_cache: Callable) -> int:
    from pipeline.sweep.plan import parse_bytes
    from pipeline.sweep.report import show_sweep
    from pipeline.sweep.runner import SweepOptions, run_sweep

    if args.max_population is not None and args.max_population < 1:
        raise PipelineError(f"bad value for '--max-population': {args.max_population} must be at least 1")
    opts = SweepOptions(
        strategy=args.strategy, trials=args.trials, search_seed=args.search_seed,
        sweep_dir=Path(args.sweep_dir) if args.sweep_dir else None,
        sweeps_root=Path(args.sweeps) if args.sweeps else None,
        vmap=not args.no_vmap, max_population=args.max_population,
        population_memory=parse_bytes(args.population_memory), rungs=args.rungs, keep=args.keep,
        show_progress=not args.no_progress,
    )
    enable_cache(args)
    summary = run_sweep(args.experiment, list(args.overrides), store, opts)
    print(show_sweep(Path(summary["sweep_dir"]), top=args.top))
    print(f"sweep folder: {summary['sweep_dir']}")
    if args.json:
        print(json.dumps(summary))
    return 0
