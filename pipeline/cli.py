"""The command line: argument parsing only; every command calls a library function."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.errors import os_error_line as _os_error_line  # also the line of pipeline.fit's errors


def _store(args):
    from pipeline.data import Store

    return Store(args.store)


def _data_command(command):
    """A ``data`` command: an OSError is one line naming its path.

    A reader of stdout that leaves early (``pipeline data show NAME | head``) is not an error:
    nothing more is printed and the status is 0, as for ``runs list``.
    """
    import functools

    @functools.wraps(command)
    def run(args) -> int:
        from pipeline.data.store import os_error

        try:
            code = command(args)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            _stdout_to_devnull()
            return 0
        except OSError as exc:
            raise os_error(exc, str(_store(args).root)) from None

    return run


def _stdout_to_devnull() -> None:
    """The reader of stdout is gone: send what is still buffered nowhere, so exit does not fail on it."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass


def _image_size(text: str | None) -> tuple[int, int] | None:
    from pipeline.data.images import parse_image_size

    return None if text is None else parse_image_size(text)


@_data_command
def cmd_data_import(args) -> int:
    from pipeline.data import import_dataset
    from pipeline.data.layout import Layout
    from pipeline.data.text_import import TextOptions
    from pipeline.launch import refuse_several_processes
    from pipeline.signals import Terminated

    refuse_several_processes("data import")
    layout = Layout.from_mib(args.row_group_mb, args.file_mb, args.block_mb)
    features = None if args.features is None else [c.strip() for c in args.features.split(",") if c.strip()]
    try:
        info = import_dataset(_store(args), args.source, args.name, target=args.target,
                              test_fraction=args.test_fraction, seed=args.seed, overwrite=args.overwrite,
                              layout=layout, features=features, wait=args.wait, task=args.task,
                              image_size=_image_size(args.image_size), channels=args.channels,
                              text=TextOptions(args.tokenizer, args.seq_len, args.text_column))
    except Terminated:
        print(f"error: terminated (SIGTERM): the import of '{args.name}' stopped; nothing partial was left "
              "in the store", file=sys.stderr)
        return 143
    rows = ", ".join(f"{k} {v}" for k, v in info.rows.items())
    print(f"imported '{info.name}': {info.task}, features {list(info.feature_shape)}, {rows} rows")
    return 0


@_data_command
def cmd_data_gc(args) -> int:
    from pipeline.launch import refuse_several_processes

    refuse_several_processes("data gc")
    store = _store(args)
    done = store.gc(wait=args.wait)
    print("\n".join(done) if done else f"nothing to collect in {store.root}")
    return 0


@_data_command
def cmd_data_verify(args) -> int:
    from pipeline.data.verify import verify_dataset

    report = verify_dataset(_store(args), args.name)
    rows = ", ".join(f"{k} {v}" for k, v in report["rows"].items())
    print(f"ok: '{report['name']}' {report['files']} files, {rows} rows, {report['bytes']:,} bytes, "
          f"fingerprint {report['fingerprint']}")
    return 0


@_data_command
def cmd_data_list(args) -> int:
    from pipeline.data.report import list_rows
    from pipeline.track.table import print_table

    rows = list_rows(_store(args))
    if not rows:
        print(f"no datasets in {_store(args).root}")
        return 0
    try:
        print_table(rows)
    except SystemExit:  # rich's answer to a closed stdout (`| head`)
        raise BrokenPipeError() from None
    return 0


@_data_command
def cmd_data_show(args) -> int:
    from pipeline.data.report import show_text

    print(show_text(_store(args), args.name))
    return 0


def _compile_cache(args) -> None:
    if not args.no_compile_cache:
        from pipeline.compile_cache import enable

        enable(args.compile_cache)


def cmd_train(args) -> int:
    from pipeline.api import train_in_folder
    from pipeline.experiments import experiment_name, load_experiment

    if args.resume:
        from pipeline.train import resume

        if not args.run_dir:
            raise PipelineError("--resume needs --run-dir of a run")
        if args.experiment and "=" in args.experiment and not Path(args.experiment).is_file():
            args.overrides, args.experiment = [args.experiment, *args.overrides], None  # an override, not a name
        plan = resume.plan(Path(args.run_dir), args.experiment, args.overrides)
        if plan.finished:  # nothing to train: say where it ended and how to extend it, change nothing
            from pipeline import distributed

            summary_file = Path(args.run_dir) / "summary.json"
            if distributed.is_primary():
                print(plan.finished)
                if args.json and summary_file.is_file():
                    print(json.dumps(json.loads(summary_file.read_text())))
            return 0
        cfg, name, experiment_file, hooks = plan.cfg, plan.experiment, plan.experiment_file, plan.hooks
    elif not args.experiment:
        raise PipelineError("pipeline train needs an EXPERIMENT (or --run-dir DIR --resume to resume a run)")
    else:
        cfg, path, hooks = load_experiment(args.experiment, args.overrides)
        name, experiment_file = experiment_name(args.experiment), str(path)
    _compile_cache(args)
    summary = train_in_folder(cfg, name, args.run_dir, _store(args),
                              runs_root=Path(args.runs) if args.runs else None, show_progress=not args.no_progress,
                              experiment_file=experiment_file, hooks=hooks)
    from pipeline import distributed

    if not distributed.is_primary():  # one of several processes: process 0 reports for all
        return 0
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
    try:
        print_table(rows)
    except SystemExit:  # rich's answer to a closed stdout (`| head`): it exits 1; not an error here
        raise BrokenPipeError() from None
    return 0


def cmd_sweep(args) -> int:
    from pipeline.sweep.command import run_from_args

    return run_from_args(args, _store(args), _compile_cache)


def cmd_sweep_export(args) -> int:
    from pipeline.launch import refuse_several_processes
    from pipeline.sweep.export import export_trial

    refuse_several_processes("sweep export")
    runs_root = Path(args.runs) if args.runs else None
    run_dir = Path(args.run_dir) if args.run_dir else None
    print(export_trial(Path(args.sweep_dir), args.trial, _store(args), run_dir, runs_root))
    return 0


def cmd_predict(args) -> int:
    from pipeline.predict import predict

    _compile_cache(args)
    result = predict(args.run_dir, args.data, out=args.out, split=args.split, which=args.which,
                     id_column=args.id, store=_store(args), batch_rows=args.batch_rows, progress=not args.no_progress)
    print(f"wrote {result.rows:,} predictions of {result.source} to {result.out}")
    return 0


def cmd_export(args) -> int:
    from pipeline.export_model import export

    result = export(args.run_dir, format=args.format, out=args.out, which=args.which)
    shape = ", ".join(map(str, result.input_shape))
    print(f"wrote {result.format} ({result.bytes:,} bytes; input ({shape}) {result.input_dtype}; "
          f"runs on {', '.join(result.platforms)}) to {result.out}")
    return 0


def cmd_runs_show(args) -> int:
    from pipeline.sweep.report import is_sweep, show_sweep
    from pipeline.track.runs import show_run

    print(show_sweep(Path(args.run)) if is_sweep(Path(args.run)) else show_run(Path(args.run)))
    return 0


def cmd_runs_plot(args) -> int:
    from pipeline.launch import refuse_several_processes
    from pipeline.sweep.report import is_sweep, plot_sweep
    from pipeline.track.runs import plot_many, plot_run_dir

    refuse_several_processes("runs plot")
    if len(args.run) > 1 or "@" in args.run[0]:  # several runs or trials overlaid in one picture
        print(plot_many(list(args.run), Path(args.out)))
        return 0
    args.run = args.run[0]
    if is_sweep(Path(args.run)):
        print("\n".join(str(p) for p in plot_sweep(Path(args.run))))
        return 0
    print(plot_run_dir(Path(args.run)))
    return 0


def cmd_launch(args) -> int:
    from pipeline.launch import launch

    command = args.launch_command[1:] if args.launch_command[:1] == ["--"] else args.launch_command
    return launch(args.processes, command, port=args.port, grace_s=args.grace, debug=args.debug)


# Commands that use devices: they join the other processes (pipeline.distributed) before JAX touches a device.
DEVICE_COMMANDS = ("train", "sweep", "sweep-export", "bench")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what JAX_PLATFORMS may name (``gpu`` is cuda or rocm)


def _check_backend() -> None:
    """A backend ``JAX_PLATFORMS`` names that cannot start here is one line naming those that can,
    before any folder is made; JAX's own report is a long traceback (a bare AssertionError for
    ``cuda`` without a GPU). Unset, JAX picks what starts (the CPU at least): nothing to check."""
    import os

    wanted = os.environ.get("JAX_PLATFORMS", "").strip()
    if not wanted:
        return
    import jax

    try:
        jax.devices()
        return
    except (RuntimeError, AssertionError) as exc:  # AssertionError: nothing it names has a device here
        reason = str(exc).splitlines()[0].split(" (set JAX_PLATFORMS")[0] if str(exc) else "no such device is visible"
    starting = _platforms_that_start()
    raise PipelineError(f"JAX_PLATFORMS={wanted} names a backend that does not start on this machine ({reason}); "
                        f"backends that start here: {', '.join(starting) or 'none'}; set JAX_PLATFORMS to one of "
                        "them or unset it (a GPU or TPU needs jax's plugin: pip install 'pipeline[cuda]' or "
                        "'pipeline[tpu]', see the README's \"Installing for a GPU or TPU\")")


def _platforms_that_start() -> list[str]:
    """The platforms whose backend JAX can start in this process, each tried alone; JAX's platform
    setting is put back (the command fails next)."""
    import jax
    from jax.extend.backend import clear_backends

    wanted, starting = jax.config.jax_platforms, []
    for platform in PLATFORMS:
        clear_backends()
        jax.config.update("jax_platforms", platform)
        try:
            jax.devices()
            starting.append(platform)
        except (RuntimeError, AssertionError):
            pass
    clear_backends()
    jax.config.update("jax_platforms", wanted)
    return starting


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
                        help="import a .npz, .csv, .parquet (file, folder, glob or URI), an image folder "
                             "(CLASS/IMAGE) or builtin:NAME")
    p.add_argument("source")
    p.add_argument("--name", required=True)
    p.add_argument("--target", default=None, help="label column of a table source")
    p.add_argument("--features", default=None, metavar="COL,COL",
                   help="feature columns of a table source (default: every column but the target)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of train rows held out as test when the source has no test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", choices=("classification", "regression"), default=None,
                   help="what the target is: class labels or numbers (default: decided from the values; "
                        "an integer target with many distinct values must say)")
    p.add_argument("--image-size", default=None, metavar="H,W",
                   help="images: center-crop to the aspect ratio of H,W and resize to it (default: keep the size; "
                        "images of mixed sizes need it)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="images: 1 (grayscale) or 3 (RGB) channels (default: the images' own)")
    p.add_argument("--tokenizer", default=None, metavar="bytes|bpe:VOCAB|FILE",
                   help="text: UTF-8 bytes, a byte-level BPE of VOCAB ids trained on the train documents, or a "
                        "tokenizer.json (default for text files: bytes)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="text: tokens a window (default 128); documents are packed with an end-of-document token")
    p.add_argument("--text-column", default=None, metavar="COL",
                   help="text: the column of a Parquet or CSV source that holds one document a row")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--row-group-mb", type=float, default=8.0, help="row group size (uncompressed MiB)")
    p.add_argument("--file-mb", type=float, default=256.0, help="file size (uncompressed MiB)")
    p.add_argument("--block-mb", type=float, default=4.0, help="chunk a table source is read in (MiB)")
    p.add_argument("--wait", action="store_true", help="wait for another writer's store lock instead of failing")
    p.set_defaults(func=cmd_data_import)
    p = data.add_parser("verify", parents=[common], help="recompute the fingerprint, check every file")
    p.add_argument("name")
    p.set_defaults(func=cmd_data_verify)
    p = data.add_parser("list", parents=[common], help="datasets in the store")
    p.set_defaults(func=cmd_data_list)
    p = data.add_parser("show", parents=[common], help="schema, shapes, rows, bytes and fingerprint")
    p.add_argument("name")
    p.set_defaults(func=cmd_data_show)
    p = data.add_parser("gc", parents=[common],
                        help="restore datasets of interrupted overwrites, delete what interrupted imports left")
    p.add_argument("--wait", action="store_true", help="wait for another writer's store lock instead of failing")
    p.set_defaults(func=cmd_data_gc)

    p = sub.add_parser("train", parents=[common], help="train an experiment")
    p.add_argument("experiment", nargs="?", default=None,
                   help="a name in experiments/ or a path to an experiment file (with --resume: the run's own)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--run-dir", default=None, help="run folder; an existing run of the same config resumes")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint, with its recorded config; "
                        "KEY=VALUE may only extend it (steps, epochs, patience, eval_every, checkpoint_*, ...)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", parents=[common], help="sweep hyperparameters: vmapped populations")
    from pipeline.sweep.command import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_sweep)
    # `pipeline sweep export ...` (routed here by _parse: `sweep` itself takes an experiment name first)
    p = sub.add_parser("sweep-export", parents=[common], prog="pipeline sweep export",
                       help="write one sweep trial as a run folder (pipeline sweep export SWEEP_DIR --trial N)")
    p.add_argument("sweep_dir")
    p.add_argument("--trial", type=int, required=True)
    p.add_argument("--run-dir", default=None, help="the run folder to write (default: a new one under the runs root)")
    p.set_defaults(func=cmd_sweep_export)

    p = sub.add_parser("predict", parents=[common],
                       help="a run's model over a stored split or a .csv/.parquet/.npz file, into a Parquet file")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("data", metavar="SOURCE|DATASET", help="a dataset in the store, or a .csv, .parquet or .npz file")
    p.add_argument("--out", required=True, help="the Parquet file to write (replaced atomically)")
    p.add_argument("--split", default="test", help="the split of a stored dataset (default %(default)s)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="which checkpoint (default %(default)s)")
    p.add_argument("--id", default=None, metavar="COLUMN",
                   help="a column of a table source written instead of the row number")
    p.add_argument("--batch-rows", type=int, default=None, help="rows per compiled call (default: by row size)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", parents=[common],
                       help="a run's model as a StableHLO (jax.export) or ONNX file that runs without pipeline")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=("stablehlo", "onnx"), required=True)
    p.add_argument("--out", required=True, help="the file to write (replaced atomically)")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="which checkpoint (default %(default)s)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", parents=[common],
                       help="benchmark suites (cpu-small, loop, sweep, data, stream-train, accel, ...) and points")
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
    p = runs.add_parser("plot", parents=[common],
                        help="draw a run's or sweep's plots; several RUN (or SWEEP_DIR@TRIAL) overlay in --out")
    p.add_argument("run", nargs="+")
    p.add_argument("--out", default="runs-compared.png", help="the overlay of several runs (default %(default)s)")
    p.set_defaults(func=cmd_runs_plot)

    p = sub.add_parser("launch", help="run N local processes of COMMAND joined by jax.distributed",
                       usage="pipeline launch -n N [--port P] [--grace S] COMMAND ...",
                       description="When a process fails the others are stopped and launch exits with its "
                                   "status (128 + the signal's number for a signal: 137 for SIGKILL); 2 for "
                                   "a refused option or command.")
    p.add_argument("-n", "--processes", type=int, required=True, metavar="N", help="processes to start (1 to 1024)")
    p.add_argument("--port", type=int, default=None,
                   help="coordinator port on localhost, checked free before anything starts (default: a free one)")
    p.add_argument("--grace", type=float, default=10.0, metavar="S",
                   help="seconds (finite, above 0) a process that did not join the others gets to stop after "
                        "one fails, before SIGKILL; joined processes are killed at once (default %(default)s)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks, and what joined processes print after another one failed")
    p.add_argument("launch_command", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="e.g. pipeline train digits_mlp steps=100; each output line comes back prefixed [i]")
    p.set_defaults(func=cmd_launch)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments; a usage error is one line on stderr (argparse's own last line) and exit status 2."""
    import contextlib
    import io

    if argv is None:
        argv = sys.argv[1:]
    if list(argv[:2]) == ["sweep", "export"]:
        argv = ["sweep-export", *argv[2:]]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args, extra = parser.parse_known_args(argv)
            # KEY=VALUE overrides may come after options (argparse stops the positional list at them).
            if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
                args.overrides = list(args.overrides) + extra
            elif extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:
        lines = captured.getvalue().strip().splitlines()
        if exc.code not in (0, None) and lines:
            print(lines[-1], file=sys.stderr)
        elif lines:
            print("\n".join(lines), file=sys.stderr)
        raise
    return args


def main(argv: list[str] | None = None) -> int:
    _load_test_plugin()
    code = _main(argv)
    if code:
        from pipeline import distributed

        if distributed.joined():  # one of several processes: leave now, its peers may be waiting for it
            distributed.leave(code)
    return code


def _load_test_plugin() -> None:
    """Test-only seam, not a user feature: ``PIPELINE_TEST_PLUGIN=MODULE`` imports MODULE before the
    command runs, once per process (a second ``main`` in the same process finds it imported).

    The tests that need a fresh process with an internal patched (kill during a save, record the
    modules loaded at the first step) put the patch in a module under tests/plugins/ and run
    ``python -m pipeline`` with this variable. An import error is not caught: a patched name that
    no longer exists fails the run with its AttributeError.
    """
    import os

    name = os.environ.get("PIPELINE_TEST_PLUGIN")
    if name and name not in sys.modules:
        import importlib

        importlib.import_module(name)


def _main(argv: list[str] | None) -> int:
    import signal

    from pipeline import signals
    from pipeline.durable.folder_locks import lock_scope

    parser = build_parser()
    args = _parse(parser, argv)
    signals.forget()
    try:
        # SIGTERM unwinds like Ctrl-C; the loops that save (train, sweep) catch both as a flag.
        with signals.sigterm_as_interrupt(), lock_scope():
            if args.command in DEVICE_COMMANDS:
                from pipeline.distributed import initialize

                initialize()  # a no-op, without JAX, unless the environment asks for several processes
                _check_backend()  # JAX_PLATFORMS naming a backend that cannot start: one line, nothing made
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
    except PipelineError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        if exc.exit_code == 130:  # a run stopped by a signal: 143 after SIGTERM
            return signals.interrupted_exit_code()
        return exc.exit_code
    except BrokenPipeError:  # `pipeline runs list | head`: the reader left, nothing is wrong
        _stdout_to_devnull()
        return 0
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = signals.last_signal() == signal.SIGTERM or isinstance(exc, signals.Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
