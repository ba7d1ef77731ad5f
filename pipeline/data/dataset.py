"""In-memory datasets: arrays per split plus the metadata stored beside them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.data.fingerprint import Fingerprint

FORMAT_VERSION = 2  # 2: streaming fingerprint (fingerprint.py), many files and row groups per split
TASKS = ("classification", "regression", "language_modeling")


@dataclass
class Split:
    """The examples of one split: features ``x`` (N, ...) and labels ``y`` (N, ...)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Loaded:
    """A source's arrays before metadata: ``test`` is None when the source has no split."""

    train: Split
    test: Split | None
    task: str
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)


@dataclass
class DatasetInfo:
    """Everything a model and an objective need to know about a dataset."""

    name: str
    task: str
    feature_shape: tuple[int, ...]
    feature_dtype: str
    label_shape: tuple[int, ...]
    label_dtype: str
    num_classes: int = 0  # 0 for regression
    class_names: list[str] = field(default_factory=list)
    feature_column: str = "x"
    label_column: str = "y"
    source: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    format_version: int = FORMAT_VERSION
    # Of the train split, float features only (stats.py): {"mean": [...], "std": [...], "min": m, "max": M}.
    # Empty for integer features and for datasets imported before it existed.
    feature_stats: dict[str, Any] = field(default_factory=dict)
    # The source's own names, for a frame given to the trained model (pipeline/predictor.py): its feature
    # columns in stored order, and its target column. Empty for arrays, built-ins and older datasets.
    feature_names: list[str] = field(default_factory=list)
    target: str = ""
    # Tokenized text (text_import.py): the tokenizer file beside the dataset, its vocabulary, the
    # end-of-document id, the UTF-8 bytes of every token id, and per-split counts. Empty otherwise.
    text: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetInfo:
        """Parse and type-check; ValueError naming the field for anything malformed or mistyped."""
        try:
            data: Any = json.loads(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object is needed, not {type(data).__name__}")
        for key in ("name", "task", "feature_shape", "feature_dtype", "label_shape", "label_dtype"):
            if key not in data:
                raise ValueError(f"no field '{key}'")
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for key, value in data.items():
            _check_field(key, value)
        if data.get("feature_column", "x") == data.get("label_column", "y"):
            raise ValueError("the feature and label columns have one name")
        data["feature_shape"] = tuple(data["feature_shape"])
        data["label_shape"] = tuple(data["label_shape"])
        return cls(**data)

    @property
    def row_bytes(self) -> int:
        """Bytes of one example in memory (features plus labels)."""
        x = np.dtype(self.feature_dtype).itemsize * int(np.prod(self.feature_shape, dtype=np.int64))
        return x + np.dtype(self.label_dtype).itemsize * int(np.prod(self.label_shape, dtype=np.int64))

    @property
    def output_size(self) -> int:
        """Width of the model's last layer for this task."""
        if self.task in ("classification", "language_modeling"):
            return self.num_classes
        return int(np.prod(self.label_shape, dtype=np.int64)) if self.label_shape else 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(key: str, value: Any) -> None:
    """Stored metadata is input like any other: each field must have its type before it is used."""
    def bad(want: str) -> ValueError:
        shown = json.dumps(value)
        return ValueError(f"field '{key}' must be {want}, not {shown[:40] + '...' if len(shown) > 40 else shown}")

    if key in ("name", "feature_column", "label_column", "source", "fingerprint", "target"):
        if not isinstance(value, str):
            raise bad("a string")
    elif key == "task":
        if value not in TASKS:
            raise bad(" or ".join(TASKS))
    elif key in ("feature_shape", "label_shape"):
        if not isinstance(value, list) or len(value) > 32 or not all(_is_int(d) and 0 < d < 2**31 for d in value):
            raise bad("a list of positive integers")
    elif key in ("feature_dtype", "label_dtype"):
        try:
            kind = np.dtype(value).kind if isinstance(value, str) else ""
        except TypeError:
            kind = ""
        if kind not in ("b", "i", "u", "f"):
            raise bad("a numeric dtype")
    elif key in ("num_classes", "format_version"):
        if not _is_int(value) or value < 0:
            raise bad("a non-negative integer")
    elif key in ("class_names", "feature_names"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
    elif key == "rows":
        if not isinstance(value, dict) or not all(_is_int(v) and v >= 0 for v in value.values()):
            raise bad("an object of row counts")
    elif key in ("feature_stats", "text"):
        if not isinstance(value, dict):
            raise bad("an object")


def fingerprint(splits: dict[str, Split]) -> str:
    """The content fingerprint of in-memory splits (same definition as a streamed import)."""
    digest = Fingerprint()
    for name, split in splits.items():
        digest.update(name, split.x, split.y)
    return digest.hexdigest()


def describe(name: str, splits: dict[str, Split], task: str, source: str,
             class_names: list[str] | None = None, num_classes: int = 0) -> DatasetInfo:
    """Build the metadata of a validated dataset from its arrays."""
    first = splits["train"]
    return DatasetInfo(
        name=name,
        task=task,
        feature_shape=tuple(int(d) for d in first.x.shape[1:]),
        feature_dtype=str(first.x.dtype),
        label_shape=tuple(int(d) for d in first.y.shape[1:]),
        label_dtype=str(first.y.dtype),
        num_classes=num_classes,
        class_names=list(class_names or []),
        source=source,
        rows={k: len(v) for k, v in splits.items()},
        fingerprint=fingerprint(splits),
    )
