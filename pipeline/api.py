"""The Python surface: ``fit`` an experiment or a config on stored data, arrays or a DataFrame, and
``load_run`` a trained model back. Errors raise ``PipelineError`` with the command line's one-line
message; nothing here exits the process or prints a traceback.

No raw exception of the layers below leaks out of them: an ``OSError`` (a ``run_dir`` that is a file,
a read-only folder, a full disk) is a ``PathError`` with the line the command line prints for it, a
checkpoint that cannot be read is a ``CorruptFile`` naming its folder, and features the loaded model
cannot take are a ``ModelInputError`` naming the shape it needs. ``load_run`` is a reader: it takes no
lock and writes nothing in the run folder.

The model both return is the trained NNX module with ``predict``, ``predict_proba`` and ``evaluate``
and a call that takes DataFrames and Arrow tables by column name (pipeline/predictor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, apply_overrides
from pipeline.data.from_python import DEFAULT_TEST_FRACTION, dataset_name
from pipeline.errors import PipelineError, one_line_errors
from pipeline.predictor import ModelInputError, Surface, with_surface
from pipeline.signals import raise_unheard
from pipeline.sweep.space import override_list

__all__ = ["FitResult", "ModelInputError", "fit", "load_run", "train_in_folder"]



@dataclass
class FitResult:
    run_dir: Path
    summary: dict[str, Any]  # the same object as RUN_DIR/summary.json
    # The trained NNX module in eval mode (normalization included): called on arrays, DataFrames or Arrow
    # tables; predict, predict_proba, evaluate (pipeline/predictor.py).
    model: Any

    @property
    def history(self) -> Any:
        """The run's metrics (``metrics.parquet``) as a pandas DataFrame: step, split, name, value, wall time."""
        from pipeline.track.metrics import read_metrics

        return read_metrics(self.run_dir / "metrics.parquet").to_pandas()


@one_line_errors
def fit(experiment_or_config: str | Path | Config, data: Any = None, *, target: str | None = None,
        overrides: list[str] | dict[str, Any] | None = None, run_dir: str | Path | None = None,
        store: Any = None, progress: bool = False, hooks: list[Any] | None = None,
        validation: Any = None, task: str | None = None,
        test_fraction: float = DEFAULT_TEST_FRACTION) -> FitResult:
    """Train an experiment (a name in ``experiments/`` or a file path) or a ``Config``.

    ``data`` is a dataset name in the store, ``(x, y)`` or ``(x, y, x_test, y_test)`` numpy
    arrays, a pandas DataFrame (or pyarrow Table) whose ``target`` column holds the labels, or
    ``(train_df, test_df)``: the user's own split, kept. ``validation`` is a frame stored as the
    validation split (the run selects its best checkpoint on it instead of carving rows from train).
    A single frame or ``(x, y)`` has no test split of its own: ``test_fraction`` of its rows are held
    out as the test split, seeded, and a note on stderr says how many. ``task`` ("classification" or
    "regression") says what the target is, as ``data import --task``; an integer target with many
    distinct values must say.

    Arrays and frames are imported into the store once, under a name made from their content
    (``arrays-HASH``, ``frame-HASH``), so the run's config names its data like any other.
    ``overrides`` are ``KEY=VALUE`` strings or a ``{key: value}`` dict; ``run_dir`` defaults to
    a new folder under the runs root. ``hooks`` (``pipeline.Hook`` subclasses) are called between
    compiled calls, after an experiment file's own ``hooks()``. ``FitResult.history`` is the run's
    metrics table as a DataFrame.
    """
    from pipeline.data import Store
    from pipeline.experiments import experiment_name, load_experiment

    items = override_list(overrides)
    store = store if store is not None else Store()
    if data is not None:
        items.append(f"data={dataset_name(store, data, target, validation, task, test_fraction)}")
    elif validation is not None or task is not None:
        raise ConfigError("fit(validation=..., task=...) apply to data given as a frame or arrays")
    if isinstance(experiment_or_config, Config):
        cfg, name, source, file_hooks = apply_overrides(experiment_or_config, items), "fit", "", []
    elif isinstance(experiment_or_config, (str, Path)):
        cfg, path, file_hooks = load_experiment(str(experiment_or_config), items)
        name, source = experiment_name(str(experiment_or_config)), str(path)
    else:
        raise ConfigError(f"fit() takes an experiment name, an experiment file or a Config, "
                          f"not {type(experiment_or_config).__name__}")
    from pipeline.compile_cache import enable_unless_configured

    enable_unless_configured()  # as the command line: a loop of fits compiles once
    summary = train_in_folder(cfg, name, run_dir, store, show_progress=progress, experiment_file=source,
                              hooks=file_hooks + list(hooks or []))
    folder = Path(summary["run_dir"])
    result = FitResult(folder, summary, load_run(folder, which="latest"))
    raise_unheard()  # a Ctrl-C after the run's last boundary stops the caller's loop here (all is recorded)
    return result


def train_in_folder(cfg: Config, name: str, run_dir: str | Path | None, store: Any, *,
                    runs_root: Path | None = None, show_progress: bool = False,
                    experiment_file: str = "", hooks: list[Any] | None = None) -> dict[str, Any]:
    """Train into ``run_dir`` (resuming it) or a new folder under the runs root; returns the summary.

    The folder is locked for the whole run and released when it ends. A folder this call made
    and that recorded nothing (the run failed its checks) is removed again. Several processes:
    process 0 makes, names and locks the folder, the others train into the same one (its path
    comes from process 0) and write nothing there.
    """
    from pipeline import distributed
    from pipeline.train.run import train

    if distributed.process_count() > 1 and not distributed.is_primary():  # process 0 names the folder
        folder = distributed.primary_does("run_dir", lambda: None)
        return train(cfg, name, Path(folder), store, show_progress=False, experiment_file=experiment_file,
                     hooks=hooks)
    return _train_in_folder_primary(cfg, name, run_dir, store, runs_root, show_progress, experiment_file, hooks)


def _train_in_folder_primary(cfg: Config, name: str, run_dir: str | Path | None, store: Any, runs_root: Path | None,
                             show_progress: bool, experiment_file: str, hooks: list[Any] | None) -> dict[str, Any]:
    import contextlib

    from pipeline import distributed
    from pipeline.durable.files import make_folders
    from pipeline.durable.folder_locks import folder_lock
    from pipeline.track.run_dir import default_runs_root, new_run_dir, remove_if_unused
    from pipeline.train.run import train

    made: list[Path] = []
    with contextlib.ExitStack() as stack:

        def open_folder() -> str:
            nonlocal made
            if run_dir is not None:
                folder = Path(run_dir)
                if folder.exists() and not folder.is_dir():
                    raise ConfigError(f"bad value for '--run-dir': {folder} exists and is not a folder")
                made = make_folders(folder)
            else:  # a new folder, made exclusively: two runs started in the same second get two folders
                folder = new_run_dir(runs_root or default_runs_root(), name, made)
            # Locked for the whole run: a second `train --run-dir SAME` is refused, naming this pid.
            stack.enter_context(folder_lock(folder, "run folder"))
            return str(folder)

        folder = Path(distributed.primary_does("run_dir", open_folder))  # its name goes to the other processes
        try:
            return train(cfg, name, folder, store, show_progress=show_progress, experiment_file=experiment_file,
                         hooks=hooks)
        except BaseException:
            if not (folder / "config.json").exists():  # nothing was recorded: leave no empty folder behind
                remove_if_unused(made)
            raise


@one_line_errors
def load_run(run_dir: str | Path, which: str = "best") -> Any:
    """The trained model of a run folder, in eval mode, ready to call on a batch of stored features.

    ``which="best"`` is the checkpoint the run selected by its best metric, ``"latest"`` its
    last one. The model includes the run's feature normalization and, when the run kept an
    exponential moving average, uses those parameters (as its evaluations did). Reading takes no
    lock and writes nothing in the folder (a run still training there is not disturbed). A call
    of the model on features it cannot take raises ``ModelInputError`` naming the shape it needs.

    The model also takes a DataFrame or Arrow table (columns matched by the feature names stored at
    import, in any order) and a single 1-D row, and has ``predict``, ``predict_proba`` and
    ``evaluate`` (pipeline/predictor.py).
    """
    from flax import nnx

    from pipeline.train.checkpoint import read_checkpoint
    from pipeline.train.run_folder import read_run
    from pipeline.train.state import create_state, typed_keys

    if which not in ("best", "latest"):
        raise ConfigError(f"load_run(which={which!r}): choose 'best' or 'latest'")
    folder = Path(run_dir)
    _, cfg, info = read_run(folder)
    spec, like = create_state(cfg, info, cfg.steps)
    checkpoints = folder / "checkpoints"
    restored = read_checkpoint(checkpoints / "best" if which == "best" else checkpoints, like)
    if restored is None:
        hint = "; an exported sweep trial keeps only its final weights: use which='latest'" if which == "best" else ""
        raise PipelineError(f"{folder}: no readable {which} checkpoint{hint}")
    state = restored[0]
    params = state.params if state.ema is None else state.ema
    model = nnx.merge(spec.eval_graphdef, params, typed_keys(state.rest, spec.key_leaves))
    return with_surface(model, Surface(info, spec, cfg.eval_batch_size))
