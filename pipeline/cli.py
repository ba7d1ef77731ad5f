"""The command line: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from pipeline.errors import PipelineError


def _store(args):
    from pipeline.data import Store

    return Store(args.store)


def cmd_data_import(args) -> int:
    from pipeline.data import import_dataset
    from pipeline.data.layout import Layout

    mib = 1024 * 1024
    layout = Layout(int(args.row_group_mb * mib), int(args.file_mb * mib), int(args.block_mb * mib))
    features = None if args.features is None else [c.strip() for c in args.features.split(",") if c.strip()]
    info = import_dataset(_store(args), args.source, args.name, target=args.target,
                          test_fraction=args.test_fraction, seed=args.seed, overwrite=args.overwrite,
                          layout=layout, features=features)
    rows = ", ".join(f"{k} {v}" for k, v in info.rows.items())
    print(f"imported '{info.name}': {info.task}, features {list(info.feature_shape)}, {rows} rows")
    return 0


def cmd_data_verify(args) -> int:
    from pipeline.data.verify import verify_dataset

    report = verify_dataset(_store(args), args.name)
    rows = ", ".join(f"{k} {v}" for k, v in report["rows"].items())
    print(f"ok: '{report['name']}' {report['files']} files, {rows} rows, {report['bytes']:,} bytes, "
          f"fingerprint {report['fingerprint']}")
    return 0


def cmd_data_list(args) -> int:
    from pipeline.data.report import list_rows
    from pipeline.track.table import print_table

    rows = list_rows(_store(args))
    if not rows:
        print(f"no datasets in {_store(args).root}")
        return 0
    print_table(rows)
    return 0


def cmd_data_show(args) -> int:
    from pipeline.data.report import show_text

    print(show_text(_store(args), args.name))
    return 0


def _compile_cache(args) -> None:
    if not args.no_compile_cache:
        from pipeline.compile_cache import enable

        enable(args.compile_cache)


def cmd_train(args) -> int:
    from pipeline.experiments import experiment_name, load_experiment
    from pipeline.track.run_dir import default_runs_root, new_run_dir
    from pipeline.train.loop import train

    cfg, experiment_file = load_experiment(args.experiment, args.overrides)
    name = experiment_name(args.experiment)
    runs_root = Path(args.runs) if args.runs else default_runs_root()
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(runs_root, name)
    if args.resume and not (run_dir / "config.json").is_file():
        raise PipelineError(f"--resume: {run_dir} is not a run folder (no config.json); give --run-dir of a run")
    _compile_cache(args)
    summary = train(cfg, name, run_dir, _store(args), show_progress=not args.no_progress,
                    experiment_file=str(experiment_file))
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
    print(f"{metrics}\nrun folder: {summary['run_dir']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_runs_list(args) -> int:
    from pipeline.track.runs import list_runs
    from pipeline.track.table import print_table

    root = Path(args.runs) if args.runs else None
    rows = list_runs(root)
    if not rows:
        print("no runs")
        return 0
    print_table(rows)
    return 0


def cmd_sweep(args) -> int:
    from pipeline.sweep.command import run_from_args

    return run_from_args(args, _store(args), _compile_cache)


def cmd_runs_show(args) -> int:
    from pipeline.sweep.report import is_sweep, show_sweep
    from pipeline.track.runs import show_run

    print(show_sweep(Path(args.run)) if is_sweep(Path(args.run)) else show_run(Path(args.run)))
    return 0


def cmd_runs_plot(args) -> int:
    from pipeline.sweep.report import is_sweep, plot_sweep
    from pipeline.track.runs import plot_run_dir

    if is_sweep(Path(args.run)):
        print("\n".join(str(p) for p in plot_sweep(Path(args.run))))
        return 0
    print(plot_run_dir(Path(args.run)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=None, help="data store root (default ./data or $PIPELINE_STORE)")
    common.add_argument("--runs", default=None, help="runs root (default ./runs or $PIPELINE_RUNS)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--compile-cache", default=None,
                        help="persistent compilation cache folder (default ~/.cache/pipeline/jax)")
    common.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh")

    parser = argparse.ArgumentParser(prog="pipeline",
                                     description="Train, sweep and benchmark JAX models on Parquet data.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the Parquet data store").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("import", parents=[common],
                        help="import a .npz, .csv, .parquet (file, folder, glob or URI) or builtin:NAME")
    p.add_argument("source")
    p.add_argument("--name", required=True)
    p.add_argument("--target", default=None, help="label column of a table source")
    p.add_argument("--features", default=None, metavar="COL,COL",
                   help="feature columns of a table source (default: every column but the target)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of train rows held out as test when the source has no test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--row-group-mb", type=float, default=8.0, help="row group size (uncompressed MiB)")
    p.add_argument("--file-mb", type=float, default=256.0, help="file size (uncompressed MiB)")
    p.add_argument("--block-mb", type=float, default=4.0, help="chunk a table source is read in (MiB)")
    p.set_defaults(func=cmd_data_import)
    p = data.add_parser("verify", parents=[common], help="recompute the fingerprint, check every file")
    p.add_argument("name")
    p.set_defaults(func=cmd_data_verify)
    p = data.add_parser("list", parents=[common], help="datasets in the store")
    p.set_defaults(func=cmd_data_list)
    p = data.add_parser("show", parents=[common], help="schema, shapes, rows, bytes and fingerprint")
    p.add_argument("name")
    p.set_defaults(func=cmd_data_show)

    p = sub.add_parser("train", parents=[common], help="train an experiment")
    p.add_argument("experiment", help="a name in experiments/ or a path to an experiment file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--run-dir", default=None, help="run folder; an existing run of the same config resumes")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", parents=[common], help="sweep hyperparameters: vmapped populations")
    from pipeline.sweep.command import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bench", parents=[common], help="benchmark the pipeline side by side with its peers")
    from pipeline.bench.command import add_arguments as add_bench_arguments
    from pipeline.bench.command import run_from_args as run_bench_from_args

    add_bench_arguments(p)
    p.set_defaults(func=run_bench_from_args)

    runs = sub.add_parser("runs", help="recorded runs").add_subparsers(dest="runs_command", required=True)
    p = runs.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("show", parents=[common])
    p.add_argument("run")
    p.set_defaults(func=cmd_runs_show)
    p = runs.add_parser("plot", parents=[common])
    p.add_argument("run")
    p.set_defaults(func=cmd_runs_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options (argparse stops the positional list at them).
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except PipelineError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
