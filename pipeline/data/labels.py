"""Labels of a table source, decided from a first pass over the target column alone.

Same rules as the in-memory sources: text (or true/false) and integer targets become dense class
ids 0..K-1 in sorted order of their distinct values, the values kept as class names; integers
that already are exactly 0..K-1 keep their ids. Fractional numbers make a regression target.
Knowing every label before writing a row is what lets the class ids of a streamed import be final.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.tensors import to_numpy
from pipeline.data.validate import DataError

KINDS = ("int", "float", "string")  # a column's kind only ever widens in this order


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

    def update(self, where: str, column: pa.Array, first_row: int) -> None:
        if column.null_count:
            row = first_row + int(np.argmax(to_numpy(pc.is_null(column))))
            raise DataError(f"{where}: target column '{self.target}' row {row} is empty")
        self.rows += len(column)
        kind = value_kind(column)
        self.kind = KINDS[max(KINDS.index(self.kind), KINDS.index(kind))]
        if self.kind == "float":
            # A regression target: distinct values are not needed, and there can be as many as rows.
            self.uniques, self.uniques_dropped = set(), True
            return
        values = pc.unique(column)
        self.uniques.update((as_text(values) if self.kind == "string" else pc.cast(values, pa.int64())).to_pylist())


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
    def from_scan(cls, scan: LabelScan) -> LabelPlan:
        if scan.kind == "float":
            return cls("regression")
        if scan.kind == "int":
            values = np.array(sorted(scan.uniques), dtype=np.int64)
            if is_dense(values):  # ids already: 0..K-1, every one present
                return cls("classification", int(values.size), [str(v) for v in values], None, "int")
            # Sparse ids (0, 1, 200000) or any other integers: dense ids, so K is the count of values.
            return cls("classification", int(values.size), [str(v) for v in values], values, "int")
        names = sorted(scan.uniques)
        return cls("classification", len(names), names, np.array(names, dtype=object), "string")

    def encode(self, column: pa.Array) -> np.ndarray:
        """Raw target values (a record batch column) as int32 class ids or float32 targets."""
        if self.task == "regression":
            return to_numpy(pc.cast(column, pa.float32())).astype(np.float32, copy=False)
        if self.kind == "int":
            raw = to_numpy(pc.cast(column, pa.int64()))
            ids = raw if self.values is None else np.searchsorted(self.values, raw)
            return ids.astype(np.int32)
        ids = pc.index_in(as_text(column), value_set=pa.array(list(self.values), pa.string()))
        return to_numpy(ids).astype(np.int32)
