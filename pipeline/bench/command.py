"""The ``pipeline bench`` command: its arguments and what it prints. Imports JAX only when run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suites", nargs="*", metavar="SUITE",
                   help="suites or point names (default cpu-small); --list shows them")
    p.add_argument("--out", default=None, help="results folder (default ./bench-results)")
    p.add_argument("--peers", default=None,
                   help="comma-separated implementations to run (default all: pipeline, jax_bare, "
                        "jax_bare_scan, torch_eager, torch_compile)")
    p.add_argument("--list", action="store_true", help="list the suites and points, measure nothing")
    p.add_argument("--json", action="store_true", help="print the new rows' summary as JSON on the last line")


def list_text() -> str:
    from pipeline.bench.points import POINTS, SUITES

    lines = ["suites:"] + [f"  {name}: {', '.join(points)}" for name, points in SUITES.items()]
    lines.append("points:")
    for p in POINTS.values():
        model = " ".join(p.overrides)
        lines.append(f"  {p.name}: {p.family} on {p.data}, batch {p.batch}, {p.precision}  {model}".rstrip())
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    from pipeline.bench.points import select
    from pipeline.bench.report import readers, side_by_side
    from pipeline.bench.run import DEFAULT_OUT, parse_peers, run_bench, summary

    if args.list:
        print(list_text())
        return 0
    select(args.suites)  # unknown names fail here, before anything is measured
    peers = parse_peers(args.peers)
    out = Path(args.out) if args.out else DEFAULT_OUT
    rows = run_bench(args.suites, out, peers, echo=lambda line: print(line, file=sys.stderr, flush=True))
    for table in (side_by_side(rows), readers(rows)):
        if table:
            print(table)
    print(f"results: {out / 'bench.parquet'} (report: {out / 'bench.md'}, chart: {out / 'bench.png'})")
    if args.json:
        print(json.dumps(summary(rows, out)))
    return 0
