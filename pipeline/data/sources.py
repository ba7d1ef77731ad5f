"""In-memory sources: ``.npz`` archives and built-ins. Table sources (.csv, .parquet) stream: tables.py."""

from __future__ import annotations

import zipfile

import numpy as np
import pyarrow as pa

from pipeline.data import fs as fsx
from pipeline.data.dataset import Loaded, Split
from pipeline.data.validate import DataError


def load_source(source: str) -> Loaded:
    """Read an ``.npz`` or ``builtin:NAME`` into arrays. Raises DataError naming the file and what is wrong."""
    if source.startswith("builtin:"):
        return load_builtin(source.removeprefix("builtin:"))
    fs, paths = fsx.expand(source, (".npz",))
    if len(paths) != 1:
        raise DataError(f"{source}: {len(paths)} .npz files; import one at a time")
    try:
        with fs.open_input_file(paths[0]) as handle:
            return load_npz(source, handle)
    except (OSError, pa.ArrowException, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{source}: cannot read: {fsx.first_line(exc)}") from None


def infer_task(y: np.ndarray) -> str:
    return "regression" if y.dtype.kind == "f" else "classification"


def load_npz(path: str, handle) -> Loaded:
    with np.load(handle, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return from_arrays(path, arrays)


def from_arrays(where: str, arrays: dict[str, np.ndarray]) -> Loaded:
    """Arrays ``x``, ``y`` and optionally ``x_test``, ``y_test`` (an .npz, or ``frames.import_arrays``)."""
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{where}: missing array '{key}' (found {', '.join(sorted(arrays)) or 'none'})")
    has_test = "x_test" in arrays or "y_test" in arrays
    if has_test and not ("x_test" in arrays and "y_test" in arrays):
        raise DataError(f"{where}: needs both 'x_test' and 'y_test', or neither")
    for key in ("x", "y", "x_test", "y_test"):
        if key in arrays:
            _check_shape(where, key, np.asarray(arrays[key]))
    train = Split(_features(where, arrays["x"]), np.asarray(arrays["y"]))
    test = Split(_features(where, arrays["x_test"]), np.asarray(arrays["y_test"])) if has_test else None
    task = infer_task(train.y)
    if test is not None and infer_task(test.y) != task:
        raise DataError(f"{where}: labels 'y' are {train.y.dtype} but 'y_test' are {test.y.dtype}")
    if task == "classification":
        return _class_ids(where, train, test)
    with np.errstate(over="ignore"):  # a label past float32's range becomes inf, refused by the row check
        train.y = train.y.astype(np.float32)
        if test is not None:
            test.y = test.y.astype(np.float32)
    return Loaded(train, test, task)


def _check_shape(where: str, key: str, a: np.ndarray) -> None:
    """One row per example (at least one dimension), and no dimension of size 0 within a row."""
    if a.ndim == 0:
        raise DataError(f"{where}: array '{key}' is 0-d (a single value); it needs one row per example")
    if 0 in a.shape[1:]:
        raise DataError(f"{where}: array '{key}' has shape {a.shape}: rows of zero width")


def _features(where: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iufb":
        raise DataError(f"{where}: features must be numeric, not {x.dtype}")
    with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused by the row check
        x = x.astype(np.float32) if x.dtype.kind != "f" or x.dtype != np.float32 else x
    return x.reshape(len(x), 1) if x.ndim == 1 else x


def _class_ids(where: str, train: Split, test: Split | None) -> Loaded:
    """Labels become dense ids 0..K-1 in sorted order of their values, which are kept as class names.

    Integers that already are 0..K-1 keep their ids; sparse ones (0, 1, 200000) would otherwise
    make a class per integer up to the largest.
    """
    labels = [train.y] + ([test.y] if test is not None else [])
    if any(y.dtype.kind in "OSU" for y in labels):  # text labels: compare them as text
        labels = [y.astype(str) for y in labels]
    try:
        values = np.unique(np.concatenate([y.ravel() for y in labels]))
    except TypeError as exc:
        raise DataError(f"{where}: labels cannot be sorted ({fsx.first_line(exc)})") from None
    ids = [np.searchsorted(values, y).astype(np.int32) for y in labels]
    train.y = ids[0]
    if test is not None:
        test.y = ids[1]
    names = [str(v).lower() if values.dtype.kind == "b" else str(v) for v in values]  # as a CSV's true/false
    return Loaded(train, test, "classification", int(values.size), names)


def load_builtin(name: str) -> Loaded:
    from pipeline.data.builtins import BUILTINS

    if name not in BUILTINS:
        known = ", ".join("builtin:" + b for b in BUILTINS)
        raise DataError(f"unknown built-in source 'builtin:{name}'; built-ins: {known}")
    return BUILTINS[name]()


def test_mask(rows: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``rows`` rows go to the test split: ``round(fraction * rows)`` of them, seeded."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--test-fraction must be between 0 and 1, not {fraction}")
    order = np.random.default_rng(seed).permutation(rows)
    n_test = max(1, int(round(fraction * rows)))
    if n_test >= rows:
        raise DataError(f"--test-fraction {fraction} leaves no training rows out of {rows}")
    mask = np.zeros(rows, dtype=bool)
    mask[order[:n_test]] = True
    return mask


def append_rows(writer, split: str, x: np.ndarray, y: np.ndarray, is_test: np.ndarray | None, row: int) -> None:
    """Rows ``row...`` of ``split``; a source without a test split sends its train rows to train or test by
    the seeded mask (``test_mask``)."""
    if split == "train" and is_test is not None:
        mask = is_test[row:row + len(x)]
        writer.append("train", x[~mask], y[~mask])
        writer.append("test", x[mask], y[mask])
    else:
        writer.append(split, x, y)


def split_off_test(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded random split: ``fraction`` of the rows go to the test split, both keep row order."""
    mask = test_mask(len(split), fraction, seed)
    return Split(split.x[~mask], split.y[~mask]), Split(split.x[mask], split.y[mask])
