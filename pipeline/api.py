"""The Python surface: ``fit`` an experiment or a config on stored data, arrays or a DataFrame, and
``load_run`` a trained model back. Errors raise ``PipelineError`` with the command line's one-line
message; nothing here exits the process or prints a traceback.

No raw exception of the layers below leaks out of them: an ``OSError`` (a ``run_dir`` that is a file,
a read-only folder, a full disk) is a ``PathError`` with the line the command line prints for it, a
checkpoint that cannot be read is a ``CorruptFile`` naming its folder, and features the loaded model
cannot take are a ``ModelInputError`` naming the shape it needs. ``load_run`` is a reader: it takes no
lock and writes nothing in the run folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config import Config, ConfigError, apply_overrides
from pipeline.errors import PathError, PipelineError

F = TypeVar("F", bound=Callable[..., Any])


class ModelInputError(PipelineError):
    """Features a loaded model cannot take: one line naming the shape and type it needs."""


def one_line_errors(function: F) -> F:
    """``function`` raising ``PipelineError`` only: an ``OSError`` becomes a ``PathError`` whose message is
    the command line's one line for it (``PATH: reason``); the ``OSError`` stays its ``__cause__``."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except OSError as exc:
            raise PathError.of(exc) from exc

    return call  # type: ignore[return-value]


@dataclass
class FitResult:
    run_dir: Path
    summary: dict[str, Any]  # the same object as RUN_DIR/summary.json
    model: Any  # the trained NNX module in eval mode; takes features as stored (normalization included)


@one_line_errors
def fit(experiment_or_config: str | Path | Config, data: Any = None, *, target: str | None = None,
        overrides: list[str] | dict[str, Any] | None = None, run_dir: str | Path | None = None,
        store: Any = None, progress: bool = False, hooks: list[Any] | None = None) -> FitResult:
    """Train an experiment (a name in ``experiments/`` or a file path) or a ``Config``.

    ``data`` is a dataset name in the store, ``(x, y)`` or ``(x, y, x_test, y_test)`` numpy
    arrays, or a pandas DataFrame (or pyarrow Table) whose ``target`` column holds the labels.
    Arrays and frames are imported into the store once, under a name made from their content
    (``arrays-HASH``, ``frame-HASH``), so the run's config names its data like any other.
    ``overrides`` are ``KEY=VALUE`` strings or a ``{key: value}`` dict; ``run_dir`` defaults to
    a new folder under the runs root. ``hooks`` (``pipeline.Hook`` subclasses) are called between
    compiled calls, after an experiment file's own ``hooks()``.
    """
    from pipeline.data import Store
    from pipeline.experiments import experiment_name, load_experiment

    items = _override_list(overrides)
    store = store if store is not None else Store()
    if data is not None:
        items.append(f"data={_dataset_name(store, data, target)}")
    if isinstance(experiment_or_config, Config):
        cfg, name, source, file_hooks = apply_overrides(experiment_or_config, items), "fit", "", []
    elif isinstance(experiment_or_config, (str, Path)):
        cfg, path, file_hooks = load_experiment(str(experiment_or_config), items)
        name, source = experiment_name(str(experiment_or_config)), str(path)
    else:
        raise ConfigError(f"fit() takes an experiment name, an experiment file or a Config, "
                          f"not {type(experiment_or_config).__name__}")
    summary = train_in_folder(cfg, name, run_dir, store, show_progress=progress, experiment_file=source,
                              hooks=file_hooks + list(hooks or []))
    folder = Path(summary["run_dir"])
    return FitResult(folder, summary, load_run(folder, which="latest"))


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


def _override_list(overrides: list[str] | dict[str, Any] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        from pipeline.sweep.space import format_value

        return [f"{k}={format_value(v)}" for k, v in overrides.items()]
    return list(overrides)


def _dataset_name(store, data: Any, target: str | None) -> str:
    """A store name for ``data``: itself, or the content-named dataset its arrays or rows were imported as."""
    import numpy as np

    from pipeline.data import import_arrays, import_dataframe

    if isinstance(data, str):
        return data
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 4):
            raise ConfigError(f"fit(data=...) takes (x, y) or (x, y, x_test, y_test) arrays, not {len(data)} items")
        arrays = [np.asarray(a) for a in data]
        digest = hashlib.sha256()
        for a in arrays:
            digest.update(json.dumps([a.shape, str(a.dtype)]).encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        name = f"arrays-{digest.hexdigest()[:12]}"
        if not store.exists(name):
            import_arrays(store, name, *arrays)
        return name
    if hasattr(data, "columns") or type(data).__name__ == "Table":
        if not target:
            raise ConfigError("fit(data=DataFrame) needs target=COLUMN, the column that holds the labels")
        import pyarrow as pa

        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        name = f"frame-{hashlib.sha256(sink.getvalue().to_pybytes() + target.encode()).hexdigest()[:12]}"
        if not store.exists(name):
            import_dataframe(store, name, data, target)
        return name
    raise ConfigError(f"fit(data=...) takes a dataset name, (x, y) arrays or a DataFrame, not {type(data).__name__}")


@one_line_errors
def load_run(run_dir: str | Path, which: str = "best") -> Any:
    """The trained model of a run folder, in eval mode, ready to call on a batch of stored features.

    ``which="best"`` is the checkpoint the run selected by its best metric, ``"latest"`` its
    last one. The model includes the run's feature normalization and, when the run kept an
    exponential moving average, uses those parameters (as its evaluations did). Reading takes no
    lock and writes nothing in the folder (a run still training there is not disturbed). A call
    of the model on features it cannot take raises ``ModelInputError`` naming the shape it needs.
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
    return _with_input_check(model, tuple(info.feature_shape), info.feature_dtype)


_CHECKED: dict[tuple[type, tuple[int, ...], str], type] = {}


def _with_input_check(model: Any, shape: tuple[int, ...], dtype: str) -> Any:
    """``model``, now of a subclass of its own class whose call turns a failure on features of the
    wrong shape or type into ``ModelInputError``; the model itself (its state, its graph, what
    ``nnx.split`` sees but the class) is unchanged. Features it takes are passed on as given: the
    check runs only after the call failed, so the model accepts everything it accepted before."""
    cls = type(model)
    key = (cls, shape, dtype)
    if key not in _CHECKED:

        def __call__(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return cls.__call__(self, x, *args, **kwargs)
            except (TypeError, ValueError, AttributeError) as exc:
                problem = _input_problem(x, shape, dtype)
                if problem is None:
                    raise
                raise ModelInputError(problem) from exc

        _CHECKED[key] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                                    "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    model.__class__ = _CHECKED[key]
    return model


def _input_problem(x: Any, shape: tuple[int, ...], dtype: str) -> str | None:
    """Why a model trained on features of ``shape`` and ``dtype`` cannot take ``x``; None if it could."""
    import numpy as np

    wanted = f"a batch of shape (N, {', '.join(map(str, shape))}) of {dtype}" if shape else f"(N,) of {dtype}"
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        return f"the model takes {wanted} as a numpy or JAX array, not a {type(x).__name__}"
    try:
        kind = np.dtype(x.dtype).kind
    except TypeError:
        kind = "O"
    integers = np.dtype(dtype).kind in "iu"
    if kind not in ("iu" if integers else "biuf"):
        return f"the model takes {wanted}, not {x.dtype} values"
    given = tuple(x.shape)
    if len(given) != len(shape) + 1:
        one = "; one example is x[None]" if given == shape else ""
        return f"the model takes {wanted}, not shape {given}{one}"
    if not integers and given[1:] != shape:  # token sequences may be shorter than the stored ones
        return f"the model takes {wanted}, not shape {given}"
    return None
