"""Sources a dataset can be imported from: .npz, .csv, .parquet and built-ins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.data.dataset import Split
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError


@dataclass
class Loaded:
    """A source's arrays before metadata: ``test`` is None when the source has no split."""

    train: Split
    test: Split | None
    task: str
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)


def load_source(source: str, target: str | None, seed: int) -> Loaded:
    """Read ``source`` into arrays. Raises DataError naming the file and what is wrong."""
    if source.startswith("builtin:"):
        return load_builtin(source.removeprefix("builtin:"), seed)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            return load_npz(path)
        if suffix == ".csv":
            return load_table(path, _read_csv(path), target)
        if suffix == ".parquet":
            return load_table(path, pq.read_table(path), target)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise DataError(f"{source}: cannot read: {_first_line(exc)}") from None
    raise DataError(f"{source}: unknown source type '{suffix}'; use .npz, .csv, .parquet or builtin:NAME")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_csv(path: Path) -> pa.Table:
    return pcsv.read_csv(path)


def infer_task(y: np.ndarray) -> str:
    return "classification" if y.dtype.kind in "iub" else "regression"


def load_npz(path: Path) -> Loaded:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array '{key}' (found {', '.join(sorted(arrays)) or 'none'})")
    has_test = "x_test" in arrays or "y_test" in arrays
    if has_test and not ("x_test" in arrays and "y_test" in arrays):
        raise DataError(f"{path}: needs both 'x_test' and 'y_test', or neither")
    train = Split(_features(arrays["x"]), arrays["y"])
    test = Split(_features(arrays["x_test"]), arrays["y_test"]) if has_test else None
    task = infer_task(train.y)
    if task == "classification":
        return _class_ids(train, test, names=None)
    train.y = train.y.astype(np.float32)
    if test is not None:
        test.y = test.y.astype(np.float32)
    return Loaded(train, test, task)


def _features(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "iufb":
        raise DataError(f"features must be numeric, not {x.dtype}")
    x = x.astype(np.float32) if x.dtype.kind != "f" or x.dtype != np.float32 else x
    return x.reshape(len(x), 1) if x.ndim == 1 else x


def _class_ids(train: Split, test: Split | None, names: list[str] | None) -> Loaded:
    """Non-negative integer labels are kept as class ids; others map to their sorted values."""
    labels = [train.y] + ([test.y] if test is not None else [])
    values = np.unique(np.concatenate([np.asarray(v).ravel() for v in labels]))
    if values.size and values.min() >= 0:
        num_classes = int(values.max()) + 1  # non-negative integers are class ids already
        train.y = train.y.astype(np.int32)
        if test is not None:
            test.y = test.y.astype(np.int32)
        class_names = names or [str(i) for i in range(num_classes)]
        return Loaded(train, test, "classification", num_classes, class_names)
    train.y = np.searchsorted(values, train.y).astype(np.int32)
    if test is not None:
        test.y = np.searchsorted(values, test.y).astype(np.int32)
    return Loaded(train, test, "classification", int(values.size), [str(v) for v in values])


def load_table(path: Path, table: pa.Table, target: str | None) -> Loaded:
    """Numeric columns become one float32 feature vector; ``target`` becomes the label."""
    if not target:
        raise DataError(f"{path}: --target COLUMN is required for a table source")
    if target not in table.column_names:
        raise DataError(
            f"{path}: no target column '{target}' (columns: {', '.join(table.column_names)})"
        )
    features = [c for c in table.column_names if c != target]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target '{target}'")
    parts = []
    for name in features:
        column = table.column(name)
        if isinstance(column.type, pa.FixedShapeTensorType):
            parts.append(to_numpy(column).reshape(table.num_rows, -1).astype(np.float32))
            continue
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)):
            raise DataError(f"{path}: feature column '{name}' is not numeric ({column.type})")
        if column.null_count:
            row = int(np.argmax(to_numpy(pc.is_null(column))))
            raise DataError(f"{path}: column '{name}' row {row} is empty")
        parts.append(to_numpy(pc.cast(column, pa.float32())).reshape(-1, 1))
    x = np.concatenate(parts, axis=1)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        column = features[int(np.argmax(~np.isfinite(x[row])))] if len(parts) == len(features) else "?"
        raise DataError(f"{path}: row {row} column '{column}' has a NaN or infinite value")
    label = table.column(target)
    if label.null_count:
        row = int(np.argmax(to_numpy(pc.is_null(label))))
        raise DataError(f"{path}: target column '{target}' row {row} is empty")
    if pa.types.is_string(label.type) or pa.types.is_large_string(label.type) or pa.types.is_dictionary(label.type):
        values = to_numpy(pc.cast(label, pa.string())).astype(str)
        names, ids = np.unique(values, return_inverse=True)
        return Loaded(Split(x, ids.astype(np.int32)), None, "classification", len(names), [str(n) for n in names])
    y = to_numpy(label)
    if y.dtype.kind in "iub":
        return _class_ids(Split(x, y), None, names=None) if y.dtype.kind != "b" else _class_ids(
            Split(x, y.astype(np.int32)), None, names=["false", "true"])
    return Loaded(Split(x, y.astype(np.float32)), None, "regression")


def load_builtin(name: str, seed: int) -> Loaded:
    from pipeline.data.builtins import BUILTINS

    if name not in BUILTINS:
        known = ", ".join("builtin:" + b for b in BUILTINS)
        raise DataError(f"unknown built-in source 'builtin:{name}'; built-ins: {known}")
    return BUILTINS[name](seed)


def split_off_test(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded random split: ``fraction`` of the rows go to the test split."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--test-fraction must be between 0 and 1, not {fraction}")
    order = np.random.default_rng(seed).permutation(len(split))
    n_test = max(1, int(round(fraction * len(split))))
    if n_test >= len(split):
        raise DataError(f"--test-fraction {fraction} leaves no training rows out of {len(split)}")
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return Split(split.x[train_idx], split.y[train_idx]), Split(split.x[test_idx], split.y[test_idx])
