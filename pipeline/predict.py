"""``pipeline predict``: a trained run's model over a stored split, a file or arrays, into one Parquet file.

The input is read a batch of rows at a time and never held whole: a stored split a row group at a
time (the store's checked reader), ``.csv`` and ``.parquet`` sources through the import's table
readers and feature code (``TableFiles``, ``FeaturePlan``: the same columns, shapes and checks as
``pipeline data import``, nothing written to the store). An ``.npz`` is loaded whole, as the import
loads it. The model runs as one compiled program of a fixed batch size (the last batch padded) and
its outputs stream into a new temporary file renamed over ``out`` once complete
(pipeline/durable/files.py): a failure at any row leaves nothing behind.

One output row per input row, in input order: ``row`` (its position in the input) or the source's
``--id`` column; ``prediction`` (the class, named as ``model.predict`` names it, or the regression
outputs); and for classification ``proba_<class>``, one column per class.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError
from pipeline.data.dataset import DatasetInfo
from pipeline.errors import one_line_errors
from pipeline.predictor import ModelInputError, class_values, input_problem

BATCH_BYTES = 16 << 20  # features per compiled call: large enough to keep a device busy, small for memory
MAX_BATCH_ROWS = 8192
METADATA_KEY = b"pipeline.predict"
PROGRESS_EVERY_S = 5.0  # plain progress lines (stderr not a terminal) at most this often
SHOWN_COLUMNS = 8
FILE_SUFFIXES = (".csv", ".parquet", ".npz")


@dataclass
class PredictResult:
    out: Path
    rows: int
    seconds: float
    source: str  # how the input was named: "dataset 'digits' (test split)", a file

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


@one_line_errors
def predict(run_dir: str | Path, data: Any, *, out: str | Path, split: str = "test", which: str = "best",
            id_column: str | None = None, store: Any = None, batch_rows: int | None = None,
            progress: bool = False) -> PredictResult:
    """Write the predictions of ``run_dir``'s model on ``data`` to the Parquet file ``out``.

    ``data`` is a dataset name in the store (its ``split``), a ``.csv``/``.parquet`` file, folder or
    glob, or an ``.npz`` (array ``x``) with the run's feature columns, or in memory a numpy array, a
    DataFrame or an Arrow table. ``id_column`` is a column of a table source copied to the output
    instead of the row number. ``which`` picks the best or latest checkpoint (``load_run``).
    ``progress`` shows a bar on stderr (plain lines when stderr is not a terminal).
    """
    from pipeline.api import load_run

    if batch_rows is not None and (isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1):
        raise ConfigError(f"bad value for '--batch-rows': {batch_rows}; give a positive integer")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"bad value for '--out': {out} is a folder; give a file name such as preds.parquet")
    model = load_run(run_dir, which=which)
    info: DatasetInfo = model._surface.info
    source = open_source(data, info, split, id_column, store)
    check_output_names(info, id_column)
    rows = batch_rows or default_batch_rows(info)
    start = time.perf_counter()
    with RowProgress(source.rows, progress) as shown:
        tables = predicted_tables(model, source, rows, shown.advance)
        written = write_predictions(out, tables, output_metadata(run_dir, which, source.what, info))
    return PredictResult(out, written, time.perf_counter() - start, source.what)


def default_batch_rows(info: DatasetInfo) -> int:
    row_bytes = np.dtype(info.feature_dtype).itemsize * int(np.prod(info.feature_shape, dtype=np.int64))
    return int(max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // max(1, row_bytes))))


# -- sources -----------------------------------------------------------------------------------------

@dataclass
class Source:
    """Features a batch at a time: ``(x, ids)``, ``ids`` the ``--id`` column's values (an Arrow array) or None."""

    what: str
    rows: int | None  # None: not known before reading (CSV)
    batches: Iterator[tuple[np.ndarray, Any]]
    id_column: str | None = None  # the output's first column instead of ``row``


def open_source(data: Any, info: DatasetInfo, split: str, id_column: str | None, store: Any) -> Source:
    """``data`` as a ``Source``, its columns and shape checked against the model's before anything runs."""
    from pipeline.data.from_python import is_frame

    if isinstance(data, (str, Path)):
        text = str(data)
        if not looks_like_file(text):
            return stored_source(text, split, info, id_column, store)
        if text.lower().endswith(".npz"):
            return npz_source(text, info, id_column)
        return table_source(text, info, id_column)
    if id_column is not None:
        raise ModelInputError("--id names a column of a .csv or .parquet source")
    if is_frame(data):
        from pipeline.predictor import frame_features

        x = frame_features(data, info)
        return Source("the frame", len(x), iter([(x, None)]))
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        x = array_features("the array", data, info)
        return Source("the array", len(x), iter([(x, None)]))
    raise ModelInputError(f"predict() takes a dataset name, a .csv, .parquet or .npz file, a numpy array or a "
                          f"DataFrame, not {type(data).__name__}")


def looks_like_file(text: str) -> bool:
    """A path (a suffix we read, a folder separator, a glob, a URI, or something on disk) rather than a dataset name."""
    return (text.lower().endswith(FILE_SUFFIXES) or "/" in text or any(c in text for c in "*?[")
            or Path(text).exists())


def stored_source(name: str, split: str, info: DatasetInfo, id_column: str | None, store: Any) -> Source:
    """A split of a dataset in the store, read a row group at a time (values checked as they are read)."""
    from pipeline.data import Store
    from pipeline.data.imports import ensure_dataset
    from pipeline.data.rowgroups import SplitIndex

    if id_column is not None:
        raise ModelInputError(f"--id names a column of a .csv or .parquet source; the rows of dataset '{name}' "
                              "are numbered")
    store = store if store is not None else Store()
    other = ensure_dataset(store, name)
    check_same_kind(name, other, info)
    if split not in other.rows:
        raise ModelInputError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(other.rows)})")
    index = SplitIndex.open(store, name, split)

    def batches() -> Iterator[tuple[np.ndarray, Any]]:
        for group in index.groups:
            yield index.read(group)[0], None

    return Source(f"dataset '{name}' ({split} split)", index.rows, batches())


def check_same_kind(name: str, other: DatasetInfo, info: DatasetInfo) -> None:
    mine = (info.task, tuple(info.feature_shape), info.feature_dtype, list(info.class_names))
    if (other.task, tuple(other.feature_shape), other.feature_dtype, list(other.class_names)) != mine:
        classes = ", other classes" if other.task == info.task == "classification" else ""
        raise ModelInputError(f"dataset '{name}' ({other.task}, features {tuple(other.feature_shape)} "
                              f"{other.feature_dtype}) is not the model's kind of data ({info.task}, features "
                              f"{tuple(info.feature_shape)} {info.feature_dtype}{classes})")


def table_source(source: str, info: DatasetInfo, id_column: str | None) -> Source:
    """``.csv`` or ``.parquet`` files read chunk by chunk, features made as the import makes them."""
    from pipeline.data.features import FeaturePlan
    from pipeline.data.layout import Layout
    from pipeline.data.tables import TableFiles

    tables = TableFiles(source, Layout())
    names = feature_columns(tables, info, id_column)
    plan = FeaturePlan.of(tables, names)
    shape = tuple(info.feature_shape)
    if plan.shape != shape:
        raise ModelInputError(f"{tables.paths[0]}: the columns {shown(names)} make features of shape {plan.shape}; "
                              f"the model takes {shape}")
    plan.dtype = info.feature_dtype
    columns = names + ([id_column] if id_column and id_column not in names else [])

    def batches() -> Iterator[tuple[np.ndarray, Any]]:
        for chunk in tables.chunks(columns, names):
            ids = chunk.batch.column(chunk.batch.schema.get_field_index(id_column)) if id_column else None
            yield plan.array(chunk), ids

    return Source(source, parquet_rows(tables) if tables.kind == "parquet" else None, batches(), id_column)


def feature_columns(tables: Any, info: DatasetInfo, id_column: str | None) -> list[str]:
    """The model's feature columns in the source: one line naming a missing one or one it was not trained on."""
    where, columns = tables.paths[0], list(tables.columns)
    names, others = list(info.feature_names), {info.target, id_column}
    if not names:
        stored = tables.pipeline_info()  # Parquet this pipeline wrote (a store's files): its tensor column
        if stored is None or stored.feature_column not in columns:
            raise ModelInputError(f"{where}: the model's dataset '{info.name}' was imported without column names "
                                  "(from arrays, an .npz or a built-in); give a dataset in the store, an .npz with "
                                  "an array 'x', or Parquet files this pipeline wrote")
        names, others = [stored.feature_column], others | {stored.label_column}
    if id_column is not None and id_column not in columns:
        raise ModelInputError(f"{where}: no column '{id_column}' for --id (columns: {shown(columns)})")
    missing = [n for n in names if n not in columns]
    if missing:
        more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelInputError(f"{where}: no column '{missing[0]}'{more}; the model takes the columns {shown(names)}")
    extra = [c for c in columns if c not in names and c not in others]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ModelInputError(f"{where}: column '{extra[0]}'{more} is not a feature the model was trained on "
                              f"(it takes {shown(names)}); name an id column with --id")
    return names


def parquet_rows(tables: Any) -> int:
    import pyarrow.parquet as pq

    rows = 0
    for path in tables.paths:
        with tables.fs.open_input_file(path) as handle:
            rows += pq.read_metadata(handle).num_rows
    return rows


def npz_source(source: str, info: DatasetInfo, id_column: str | None) -> Source:
    """Array ``x`` of an ``.npz`` (loaded whole, as ``pipeline data import`` loads one)."""
    import zipfile

    import pyarrow as pa

    from pipeline.data import fs as fsx

    if id_column is not None:
        raise ModelInputError(f"--id names a column of a .csv or .parquet source; the rows of {source} are numbered")
    fs, paths = fsx.expand(source, (".npz",))
    if len(paths) != 1:
        raise ModelInputError(f"{source}: {len(paths)} .npz files; predict on one at a time")
    try:
        with fs.open_input_file(paths[0]) as handle, np.load(handle, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise ModelInputError(f"{source}: no array 'x' (found {', '.join(sorted(archive.files)) or 'none'})")
            x = archive["x"]
    except (OSError, pa.ArrowException, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelInputError(f"{source}: cannot read: {fsx.first_line(exc)}") from None
    x = array_features(f"{source}: array 'x'", x, info)
    return Source(source, len(x), iter([(x, None)]))


def array_features(where: str, x: Any, info: DatasetInfo) -> np.ndarray:
    """An array as the stored features: shape and dtype checked, flat rows of images reshaped."""
    shape = tuple(info.feature_shape)
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim >= 1 and x.shape[1:] != shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        x = x.reshape(len(x), *shape)  # flat rows, as an MLP takes them
    problem = input_problem(x, shape, info.feature_dtype)
    if problem is None and x.shape[1:] != shape:
        problem = f"the model takes features of shape (N, {', '.join(map(str, shape))}), not {x.shape}"
    if problem is not None:
        raise ModelInputError(f"{where}: {problem}")
    return x.astype(info.feature_dtype, copy=False)


def shown(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN_COLUMNS else ""
    return ", ".join(names[:SHOWN_COLUMNS]) + more


# -- the model, a batch at a time -------------------------------------------------------------------

def model_function(model: Any) -> tuple[Callable[..., Any], Any, Any]:
    """The loaded model as a pure function ``f(params, rest, x)`` of its weights and a batch, with them.

    The run's own eval-mode graph (``StepSpec.eval_graphdef``): what ``load_run`` merged the
    checkpoint into, normalization included; outputs are the model's as ``model(x)`` gives them.
    """
    from flax import nnx

    graphdef = model._surface.spec.eval_graphdef
    _, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(params: Any, rest: Any, x: Any) -> Any:
        return nnx.merge(graphdef, params, rest)(x)

    return apply, params, rest


def predicted_tables(model: Any, source: Source, batch_rows: int, advance: Callable[[int], None]) -> Iterator[Any]:
    """Output tables in input order. Batch N+1 is read and dispatched before batch N's outputs are
    fetched, so reading the input overlaps the device's work."""
    info: DatasetInfo = model._surface.info
    _, params, rest = model_function(model)
    graphdef, probabilities = model._surface.spec.eval_graphdef, info.task == "classification"
    try:
        run = compiled_outputs(graphdef, probabilities)
    except TypeError:  # a user's module with unhashable static attributes: compiled for this call only
        run = compiled_outputs.__wrapped__(graphdef, probabilities)
    first, pending = 0, None
    for x, ids in rebatched(source.batches, batch_rows):
        n = len(x)
        if n < batch_rows:  # one program for every batch: pad the last one (rows are independent in eval mode)
            x = np.concatenate([x, np.zeros((batch_rows - n, *x.shape[1:]), x.dtype)])
        outputs = run(params, rest, x)
        if pending is not None:
            yield output_table(info, source.id_column, *pending)
            advance(pending[3])
        pending = (outputs, ids, first, n)
        first += n
    if pending is not None:
        yield output_table(info, source.id_column, *pending)
        advance(pending[3])


@functools.lru_cache(maxsize=8)
def compiled_outputs(graphdef: Any, probabilities: bool) -> Callable[..., tuple[Any, Any]]:
    """``(params, rest, x) -> (outputs, probabilities or outputs)``, compiled once per model graph: a second
    ``predict`` of the same run (or of another run of the same architecture) in a process compiles nothing."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @jax.jit
    def run(params: Any, rest: Any, x: Any) -> tuple[Any, Any]:
        out = nnx.merge(graphdef, params, rest)(x)
        return out, (jax.nn.softmax(out.astype(jnp.float32), axis=-1) if probabilities else out)

    return run


def rebatched(batches: Iterator[tuple[np.ndarray, Any]], size: int) -> Iterator[tuple[np.ndarray, Any]]:
    """The source's chunks (row groups, CSV blocks) cut and joined into batches of ``size`` rows (the last shorter)."""
    import pyarrow as pa

    held: list[tuple[np.ndarray, Any]] = []
    count = 0

    def joined(parts: list[tuple[np.ndarray, Any]]) -> tuple[np.ndarray, Any]:
        x = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        ids = None if parts[0][1] is None else pa.concat_arrays(
            [p[1].combine_chunks() if isinstance(p[1], pa.ChunkedArray) else p[1] for p in parts])
        return x, ids

    for x, ids in batches:
        start = 0
        while start < len(x):
            take = min(size - count, len(x) - start)
            held.append((x[start:start + take], None if ids is None else ids.slice(start, take)))
            count, start = count + take, start + take
            if count == size:
                yield joined(held)
                held, count = [], 0
    if held:
        yield joined(held)


def output_table(info: DatasetInfo, id_column: str | None, outputs: tuple[Any, Any], ids: Any, first: int,
                 n: int) -> Any:
    """One batch's output rows: ``row`` (or the id column), ``prediction``, and ``proba_<class>``."""
    import pyarrow as pa

    from pipeline.data.tensors import to_arrow

    out, second = (np.asarray(a)[:n] for a in outputs)
    columns: dict[str, Any] = {"row": pa.array(np.arange(first, first + n, dtype=np.int64))}
    if info.task == "classification":
        ids_of = out.argmax(-1)
        columns["prediction"] = pa.array(class_values(info.class_names)[ids_of] if info.class_names
                                         else ids_of.astype(np.int32))
        for k, name in enumerate(class_labels(info)):
            columns[f"proba_{name}"] = pa.array(second[:, k].astype(np.float32))
    elif info.task == "language_modeling":
        columns["prediction"] = to_arrow(out.argmax(-1).astype(np.int32))
    else:
        scalar = info.label_shape == () and out.ndim == 2 and out.shape[1] == 1
        columns["prediction"] = to_arrow((out[:, 0] if scalar else out).astype(np.float32))
    table = pa.table(columns)
    return table if id_column is None else table.set_column(0, id_column, ids)


def class_labels(info: DatasetInfo) -> list[str]:
    return list(info.class_names) or [str(k) for k in range(info.num_classes)]


def check_output_names(info: DatasetInfo, id_column: str | None) -> None:
    """The ``--id`` column keeps its name: it must not be one of the output's own columns."""
    if id_column is None:
        return
    taken = ["prediction"] + ([f"proba_{n}" for n in class_labels(info)] if info.task == "classification" else [])
    if id_column in taken:
        raise ConfigError(f"bad value for '--id': '{id_column}' is also an output column ({shown(taken)})")


# -- the output file -----------------------------------------------------------------------------------

def output_metadata(run_dir: str | Path, which: str, source: str, info: DatasetInfo) -> dict[bytes, bytes]:
    record = {"run_dir": str(Path(run_dir).resolve()), "which": which, "source": source, "task": info.task,
              "class_names": list(info.class_names), "dataset": info.name}
    return {METADATA_KEY: json.dumps(record, sort_keys=True).encode()}


def write_predictions(out: Path, tables: Iterator[Any], metadata: dict[bytes, bytes]) -> int:
    """Stream ``tables`` into ``out`` through a new temporary file, renamed over ``out`` when complete.

    Folders made for ``out`` are removed again when anything fails (nothing is left behind).
    """
    import pyarrow.parquet as pq

    from pipeline.durable.files import write_into_new_folders

    rows = 0

    def write(handle: Any) -> None:
        nonlocal rows
        writer = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(handle, table.schema.with_metadata(metadata))
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ModelInputError("no rows to predict")

    write_into_new_folders(out, write)
    return rows


# -- progress ------------------------------------------------------------------------------------------

class RowProgress:
    """Rows predicted so far on stderr: a bar on a terminal, a plain line every few seconds elsewhere."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled = total, enabled
        self.done, self._bar, self._task = 0, None, None
        self._start = self._shown = time.perf_counter()

    def __enter__(self) -> RowProgress:
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("rows"), TimeRemainingColumn(), console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task("predict", total=self.total)
        self._start = self._shown = time.perf_counter()
        return self

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.enabled and time.perf_counter() - self._shown >= PROGRESS_EVERY_S:
            self._shown = time.perf_counter()
            of = f" of {self.total:,}" if self.total else ""
            print(f"predict: {self.done:,}{of} rows", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if self.enabled and exc[0] is None:
            seconds = time.perf_counter() - self._start
            print(f"predict: {self.done:,} rows in {seconds:.1f} s ({self.done / max(seconds, 1e-9):,.0f} rows/s)",
                  file=sys.stderr, flush=True)


class _PredictModule(types.ModuleType):
    """``pipeline.predict`` names both this module (once imported, the package's attribute) and the
    function: calling the module calls ``predict`` (as ``pipeline.sweep``, pipeline/sweep/__init__.py)."""

    def __call__(self, *args: Any, **kwargs: Any) -> PredictResult:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _PredictModule
