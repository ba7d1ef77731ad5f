"""``pipeline.sweep(...)``: a sweep from Python, on the command line's own code path.

The keyword arguments become the ``pipeline sweep`` command line (``rungs=(100, 200)`` is
``--rungs 100,200``, ``refill=True`` is ``--refill``), parsed by the same parser and run by the
same function, so a sweep started here and one started in a shell are the same sweep: the same
checks and one-line errors, the same folder, resumable from either side.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import Config, ConfigError, to_json
from pipeline.errors import PipelineError, one_line_errors
from pipeline.signals import raise_unheard
from pipeline.sweep.space import override_list


@dataclass
class SweepResult:
    sweep_dir: Path
    summary: dict[str, Any]  # the same object as SWEEP_DIR/summary.json and `pipeline sweep --json`
    store: Any = None

    @property
    def trials(self) -> pa.Table:
        """``SWEEP_DIR/trials.parquet``: one row per trial, its hyperparameters, status and metrics."""
        import pyarrow.parquet as pq

        return pq.read_table(self.sweep_dir / "trials.parquet")

    @property
    def best(self) -> dict[str, Any] | None:
        """The best trial by the sweep's selection (on validation): trial id, hyperparameters, metrics."""
        return self.summary.get("best")

    def export(self, trial: int, run_dir: str | Path | None = None) -> Path:
        """Trial ``trial`` written as a run folder (``pipeline sweep export``); ``load_run`` reads it."""
        from pipeline.data import Store
        from pipeline.sweep.export import export_trial

        store = self.store if self.store is not None else Store()
        return export_trial(self.sweep_dir, trial, store, Path(run_dir) if run_dir is not None else None)


def space_arguments(space: dict[str, Any] | None) -> list[str]:
    """``{key: spelling}`` as ``KEY=SPACE`` arguments: a string is a spelling (``"loguniform(1e-4,1e-1)"``),
    a list or tuple is ``choice(...)``, anything else a fixed value."""
    from pipeline.sweep.space import format_value

    out = []
    for key, value in (space or {}).items():
        if isinstance(value, (list, tuple)):
            out.append(f"{key}=choice({';'.join(format_value(v) for v in value)})")
        else:
            out.append(f"{key}={value if isinstance(value, str) else format_value(value)}")
    return out


def option_arguments(options: dict[str, Any]) -> list[str]:
    """Keyword options as flags: ``max_population=4`` is ``--max-population 4``, ``True`` a bare flag,
    ``False``/``None`` nothing, a list or tuple comma-joined."""
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def config_experiment(cfg: Config) -> Path:
    """A ``Config`` as an experiment file (named by its content), so the sweep folder records a file
    that a resume, ``sweep export`` and a Ray task can load again."""
    import hashlib
    import os

    from pipeline.durable.files import make_folders, write_bytes

    text = to_json(cfg)
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pipeline" / "configs"
    make_folders(folder)
    path = folder / f"config_{hashlib.sha256(text.encode()).hexdigest()[:12]}.py"
    if not path.exists():  # written atomically: a second sweep of the same config finds it whole
        write_bytes(path, ("import json\n\nfrom pipeline.config import Config, from_dict\n\n\n"
                           f"def config():\n    return from_dict(Config, json.loads({text!r}))\n").encode())
    return path


def sweep(experiment_or_config: str | Path | Config, space: dict[str, Any] | None = None, *,
          strategy: str | None = None, trials: int | None = None, data: Any = None, target: str | None = None,
          overrides: list[str] | dict[str, Any] | None = None, sweep_dir: str | Path | None = None,
          store: Any = None, progress: bool = False, hooks: Callable[[int], list] | None = None,
          **options: Any) -> SweepResult:
    """Sweep an experiment (a name, a file or a ``Config``) over ``space`` and return its result.

    ``data`` is what ``fit`` takes (a dataset name, arrays, a DataFrame with ``target``);
    ``overrides`` fix keys for every trial; ``sweep_dir`` resumes an existing sweep of the same
    inputs; ``hooks(trial_id)`` returns a trial's own ``pipeline.Hook`` objects. Further keyword
    arguments are the command line's options (``rungs``, ``keep``, ``max_population``,
    ``search_seed``, ``pruner``, ``refill``, ``vmap``, ``no_vmap``, ...).
    Errors raise ``PipelineError`` with the command line's one line.
    """
    from pipeline.data import Store
    from pipeline.data.from_python import dataset_name
    from pipeline.sweep.command import add_arguments, sweep_from_args

    if isinstance(experiment_or_config, Config):
        experiment = str(config_experiment(experiment_or_config))
    elif isinstance(experiment_or_config, (str, Path)):
        experiment = str(experiment_or_config)
    else:
        raise ConfigError(f"sweep() takes an experiment name, an experiment file or a Config, "
                          f"not {type(experiment_or_config).__name__}")
    store = store if store is not None else Store()
    fixed = override_list(overrides)
    if data is not None:
        fixed.append(f"data={dataset_name(store, data, target)}")
    argv = [experiment, *space_arguments(space), *fixed,
            *option_arguments({"strategy": strategy, "trials": trials, "sweep_dir": sweep_dir, **options})]
    if not progress:
        argv.append("--no-progress")
    parser = argparse.ArgumentParser(prog="pipeline sweep", exit_on_error=False, add_help=False)
    add_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise PipelineError(f"sweep(): {exc}") from None
    if unknown:
        raise PipelineError(f"sweep(): unknown option {unknown[0]!r}")
    from pipeline.compile_cache import enable_unless_configured

    summary = one_line_errors(sweep_from_args)(args, store, lambda args: enable_unless_configured(), hooks)
    raise_unheard()  # a Ctrl-C after the sweep's last boundary stops the caller's loop here (all is recorded)
    return SweepResult(Path(summary["sweep_dir"]), summary, store)
