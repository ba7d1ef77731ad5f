"""The ``pipeline bench`` command: its arguments and what it prints. Imports JAX only when run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help="suites (cpu-small, mlp, cnn, transformer, data, loop, sweep, stream-train, accel, ...), "
                        "point names or experiment files (default cpu-small; --list shows them), and KEY=VALUE "
                        "config overrides for every point")
    p.set_defaults(overrides=[])  # names and overrides given after an option land here
    p.add_argument("--out", default=None,
                   help="results folder (default ./bench-results; ./bench-results/accel-DEVICE for accel)")
    p.add_argument("--peers", default=None,
                   help="comma-separated implementations to run (default all: pipeline, jax_bare, jax_bare_scan, "
                        "torch_eager, torch_compile; a suite's other ways, e.g. population,sequential, likewise)")
    p.add_argument("--minutes", type=float, default=None,
                   help="start no point or implementation after this many minutes; the rest are recorded as "
                        "skipped (default: no limit; 7.5 with the accel suite)")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="measure every point on this dataset of the data store (--store) instead of its own data")
    p.add_argument("--docs", default=None, metavar="DIR",
                   help="where the accel suite's report is copied as accel-DEVICE.md (default: docs/benchmarks "
                        "of this repository's checkout when run from one; an installed package copies it only here)")
    p.add_argument("--no-docs", action="store_true", help="do not copy the accel suite's report")
    p.add_argument("--seeds", type=int, default=3, help="search seeds per strategy of the search suite (default 3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the search suite's first search seed (default 0): another run's seeds follow on")
    p.add_argument("--list", action="store_true", help="list the suites and points, measure nothing")
    p.add_argument("--json", action="store_true", help="print the new rows' summary as JSON on the last line")


def list_text() -> str:
    from pipeline.bench.points import POINTS, SUITES

    lines = ["suites:"] + [f"  {name}: {', '.join(points)}" for name, points in SUITES.items()]
    lines.append("points:")
    for p in POINTS.values():
        model = " ".join(p.overrides)
        kind = p.family if not p.model or p.model == p.family else f"{p.family} ({p.model})"
        extra = f", {p.population} members" if p.population else ""
        lines.append(f"  {p.name}: {kind} on {p.data}, batch {p.batch}, {p.precision}{extra}  {model}".rstrip())
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    from pipeline.bench import accel
    from pipeline.bench.points import select
    from pipeline.bench.run import parse_peers, split_names

    if args.list:
        print(list_text())
        return 0
    if args.suites[:1] == ["search"]:
        return search_from_args(args)
    names, overrides = split_names([*args.suites, *args.overrides])
    peers = parse_peers(args.peers)
    select(names)  # unknown names fail here, before anything is measured
    if args.minutes is not None and not args.minutes > 0:
        from pipeline.errors import PipelineError

        raise PipelineError(f"bad value for '--minutes': {args.minutes} must be more than 0")
    accel.share_gpu_with_torch(peers)  # before JAX starts its backend
    from pipeline.bench.report import readers, side_by_side, ways
    from pipeline.bench.run import DEFAULT_OUT, run_bench, summary

    started = time.time()
    with_accel = accel.SUITE in names
    minutes = args.minutes if args.minutes is not None else (accel.DEFAULT_MINUTES if with_accel else None)
    slug = accel.device_slug() if with_accel else ""
    out = Path(args.out) if args.out else (DEFAULT_OUT / f"accel-{slug}" if with_accel else DEFAULT_OUT)
    docs = None if args.no_docs or not with_accel else (Path(args.docs) if args.docs else accel.default_docs())
    if with_accel and slug == "cpu":
        print("warning: JAX found no accelerator; the accel suite runs its CPU stand-ins", file=sys.stderr)

    def echo(line: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {line}" if with_accel else line, file=sys.stderr, flush=True)

    from pipeline.data import Store

    store = Store(args.store)  # the user's: --dataset and an experiment file's dataset are read from it
    rows = run_bench(names, out, peers, echo=echo, deadline=started + 60 * minutes if minutes else None,
                     overrides=overrides, dataset=args.dataset, data_store=store,
                     after_point=(lambda _rows: accel.publish(out, docs, slug)) if docs else None)
    for table in (side_by_side(rows), readers(rows), ways(rows)):
        if table:
            print(table)
    print(f"results: {out / 'bench.parquet'} (report: {out / 'bench.md'}, chart: {out / 'bench.png'})")
    if docs:
        print(f"report copied to {accel.publish(out, docs, slug)}")
    elif with_accel and not args.no_docs:
        print("report not copied: not run from a checkout of this repository (--docs DIR copies it)")
    if args.json:
        print(json.dumps(summary(rows, out)))
    refuse_unmeasurable(rows)
    return 0


def refuse_unmeasurable(rows: list[dict]) -> None:
    """The run failed (one line, exit 2, after the tables) when no implementation of a point could run
    here: a missing dataset or model is the user's to fix, not a result."""
    from pipeline.bench.measure import UNAVAILABLE
    from pipeline.bench.points import BenchError

    statuses: dict[str, list[dict]] = {}
    for row in rows:
        statuses.setdefault(row["point"], []).append(row)
    dead = [(point, rs[0].get("detail") or "") for point, rs in statuses.items()
            if all(r["status"] == UNAVAILABLE for r in rs)]
    if dead:
        point, why = dead[0]
        more = f" (and {len(dead) - 1} more points)" if len(dead) > 1 else ""
        raise BenchError(f"point {point}: every implementation unavailable: {why}{more}")


def search_from_args(args: argparse.Namespace) -> int:
    """``pipeline bench search [TASK ...] [--peers STRATEGY,...] [--seeds N] [--first-seed S]`` (bench/search.py)."""
    from pipeline.bench.search import STRATEGIES, TASKS, run_search_bench
    from pipeline.errors import PipelineError

    tasks = [*args.suites[1:], *args.overrides] or list(TASKS)
    strategies = args.peers.split(",") if args.peers else list(STRATEGIES)
    for name, known, what in [(t, TASKS, "task") for t in tasks] + [(s, STRATEGIES, "strategy") for s in strategies]:
        if name not in known:
            raise PipelineError(f"unknown search benchmark {what} '{name}'; choose from {', '.join(known)}")
    if args.seeds < 1:
        raise PipelineError(f"bad value for '--seeds': {args.seeds} must be at least 1")
    if args.first_seed < 0:
        raise PipelineError(f"bad value for '--first-seed': {args.first_seed} must be at least 0")
    out = Path(args.out) if args.out else Path("bench-results")
    docs = Path(args.docs) if args.docs and not args.no_docs else None  # the report only where asked
    run_search_bench(out, tasks, strategies, range(args.first_seed, args.first_seed + args.seeds), docs)
    print(f"results: {out / 'search.parquet'}" + (f"; report: {docs / 'search.md'}" if docs else ""))
    return 0
