"""Labels of a table source, decided from a first pass over the target column alone.

Same rules as the in-memory sources: text (or true/false) and integer targets become dense class
ids 0..K-1 in sorted order of their distinct values, the values kept as class names; integers
that already are exactly 0..K-1 keep their ids. Fractional numbers make a regression target.
Knowing every label before writing a row is what lets the class ids of a streamed import be final.

The task can be said (``--task classification|regression``, ``task=`` from Python). Unsaid, an
integer target is read as class ids unless it looks like a count or a measurement
(``ambiguous_integers``): then the import is refused, naming both choices, instead of silently
making a class of every value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.dataset import Loaded
from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError

KINDS = ("int", "float", "string")  # a column's kind only ever widens in this order
TASK_CHOICES = ("classification", "regression")  # what --task may say
MAX_UNASKED_CLASSES = 50  # more distinct integers than this are not taken for class ids unasked
ALWAYS_CLASSES = 10  # this many distinct integers or fewer are class ids, however few the rows


def check_task_choice(task: str | None) -> None:
    if task is not None and task not in TASK_CHOICES:
        raise DataError(f"--task must be classification or regression, not '{task}'")


def ambiguous_integers(distinct: int, rows: int) -> bool:
    """Integers that may as well be numbers as class ids: many distinct values, or few rows for each."""
    return distinct > MAX_UNASKED_CLASSES or (distinct > ALWAYS_CLASSES and distinct * 5 > rows)


def refuse_ambiguous(where: str, target: str, distinct: int, rows: int) -> None:
    if ambiguous_integers(distinct, rows):
        raise DataError(f"{where}: target '{target}' holds {distinct} distinct integers in {rows} rows, class ids "
                        "or numbers? say which with --task classification or --task regression (task= from Python)")


def class_name(value) -> str:
    """A label value as its class name: integers (and whole floats) without a fraction, text as it is."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def value_kind(column: pa.Array) -> str:
    """The narrowest kind every value of a column parses as (text columns from CSV)."""
    t = column.type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        for kind, target in (("int", pa.int64()), ("float", pa.float64())):
            try:
                pc.cast(column, target)
                return kind
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        return "string"
    raise DataError(f"labels of type {t} are not supported; use numbers or text")


def as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_boolean(column.type):
        return pc.if_else(column, "true", "false")
    return pc.cast(column, pa.string())


@dataclass
class LabelScan:
    """Accumulates kind, row count and distinct values over chunks of the target column."""

    target: str
    kind: str = "int"
    rows: int = 0
    uniques: set = field(default_factory=set)
    uniques_dropped: bool = False
    keep_floats: bool = False  # --task classification: fractional values are classes too

    def update(self, where: str, column: pa.Array, first_row: int) -> None:
        if column.null_count:
            row = first_row + int(np.argmax(to_numpy(pc.is_null(column))))
            raise DataError(f"{where}: target column '{self.target}' row {row} is empty")
        self.rows += len(column)
        kind = value_kind(column)
        self.kind = KINDS[max(KINDS.index(self.kind), KINDS.index(kind))]
        if self.kind == "float" and not self.keep_floats:
            # A regression target: distinct values are not needed, and there can be as many as rows.
            self.uniques, self.uniques_dropped = set(), True
            return
        values = pc.unique(column)
        number = pa.float64() if self.kind == "float" else pa.int64()
        self.uniques.update((as_text(values) if self.kind == "string" else pc.cast(values, number)).to_pylist())


def is_dense(values: np.ndarray) -> bool:
    """Sorted distinct integers that are exactly 0, 1, ..., K-1."""
    return bool(values.size) and values[0] == 0 and values[-1] == values.size - 1


@dataclass
class LabelPlan:
    """How raw target values become stored labels."""

    task: str
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    values: np.ndarray | None = None  # sorted raw values that map to ids 0..K-1 (int and text kinds)
    kind: str = "float"

    @property
    def dtype(self) -> str:
        return "float32" if self.task == "regression" else "int32"

    @classmethod
    def from_scan(cls, scan: LabelScan, where: str = "", task: str | None = None) -> LabelPlan:
        """The plan for a scanned target; ``task`` as the user said it (None: from the values)."""
        if scan.kind == "string":
            if task == "regression":
                raise DataError(f"{where}: target '{scan.target}' holds text (or true/false), not numbers; "
                                "--task regression needs numbers")
            names = sorted(scan.uniques)
            return cls("classification", len(names), names, np.array(names, dtype=object), "string")
        if task == "regression" or (scan.kind == "float" and task is None):
            return cls("regression")
        if scan.kind == "float":  # --task classification of numbers with fractions: each value a class
            values = np.array(sorted(scan.uniques), dtype=np.float64)
            return cls("classification", int(values.size), [class_name(float(v)) for v in values], values, "float")
        values = np.array(sorted(scan.uniques), dtype=np.int64)
        if task is None:
            refuse_ambiguous(where, scan.target, int(values.size), scan.rows)
        if is_dense(values):  # ids already: 0..K-1, every one present
            return cls("classification", int(values.size), [str(v) for v in values], None, "int")
        # Sparse ids (0, 1, 200000) or any other integers: dense ids, so K is the count of values.
        return cls("classification", int(values.size), [str(v) for v in values], values, "int")

    def encode(self, column: pa.Array) -> np.ndarray:
        """Raw target values (a record batch column) as int32 class ids or float32 targets."""
        if self.task == "regression":
            return to_numpy(pc.cast(column, pa.float32())).astype(np.float32, copy=False)
        if self.kind in ("int", "float"):
            raw = to_numpy(pc.cast(column, pa.int64() if self.kind == "int" else pa.float64()))
            ids = raw if self.values is None else np.searchsorted(self.values, raw)
            return ids.astype(np.int32)
        ids = pc.index_in(as_text(column), value_set=pa.array(list(self.values), pa.string()))
        return to_numpy(ids).astype(np.int32)


def _integer_text(name: str) -> bool:
    return name.removeprefix("-").isdigit()


def settle_loaded_task(where: str, loaded: Loaded, task: str | None, ask: bool = True) -> Loaded:
    """An in-memory source (``.npz``, arrays from Python) with its task as said, or refused if ambiguous.

    ``from_arrays`` made integer and text labels class ids (their values the class names) and
    fractional ones regression targets; ``task`` turns one into the other. ``ask`` False (a
    built-in, which states its own task) skips the ambiguity check.
    """
    if loaded.task not in TASK_CHOICES:
        if task is not None:
            raise DataError(f"{where}: --task does not apply to a {loaded.task} source")
        return loaded
    splits = [s for s in (loaded.train, loaded.test) if s is not None]
    if loaded.task == "classification":
        integers = bool(loaded.class_names) and all(_integer_text(n) for n in loaded.class_names)
        if task == "regression":
            if not integers:
                raise DataError(f"{where}: labels 'y' are text (or true/false), not numbers; "
                                "--task regression needs numbers")
            values = np.array([int(n) for n in loaded.class_names], dtype=np.float32)
            for split in splits:
                split.y = values[split.y]
            return Loaded(loaded.train, loaded.test, "regression")
        if task is None and ask and integers:
            refuse_ambiguous(where, "y", loaded.num_classes, sum(len(s) for s in splits))
        return loaded
    if task == "classification":  # numbers with fractions, each value a class
        values = np.unique(np.concatenate([s.y.ravel() for s in splits]))
        for split in splits:
            split.y = np.searchsorted(values, split.y).astype(np.int32)
        return Loaded(loaded.train, loaded.test, "classification", int(values.size),
                      [class_name(float(v)) for v in values])
    return loaded
