"""Data handed over from Python (``fit(data=...)``, ``pipeline.sweep(data=...)``) as a dataset of the store.

Arrays and frames are imported once, under a name made from their content and the import's
options (``arrays-HASH``, ``frame-HASH``), so a run's config names its data like any other and the
same call again finds the dataset it made.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from pipeline.config import ConfigError

DEFAULT_TEST_FRACTION = 0.2


def is_frame(x: Any) -> bool:
    """A pandas DataFrame or a pyarrow Table (a pandas Series or a numpy array is not)."""
    import pyarrow as pa

    return isinstance(x, pa.Table) or (hasattr(x, "columns") and hasattr(x, "iloc") and hasattr(x, "dtypes"))


def dataset_name(store, data: Any, target: str | None, validation: Any = None, task: str | None = None,
                  test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """A store name for ``data``: itself, or the content-named dataset its arrays or rows were imported as.

    The name covers every input of the import (frames, target, task, test fraction), so a change of any
    makes another dataset, and the same call again finds the one it made.
    """
    import numpy as np

    from pipeline.data import import_arrays, import_dataframe

    if isinstance(data, str):
        if validation is not None or task is not None:
            raise ConfigError(f"fit(data='{data}'): validation= and task= apply to data given as a frame or arrays; "
                              "a stored dataset keeps its own")
        return data
    options = options_key(task, test_fraction)
    frames = list(data) if isinstance(data, (tuple, list)) and data and all(is_frame(d) for d in data) else None
    if is_frame(data) or frames is not None:
        frames = frames or [data]
        if len(frames) > 2:
            raise ConfigError(f"fit(data=...) takes a frame or (train_df, test_df), not {len(frames)} frames")
        if not target:
            raise ConfigError("fit(data=DataFrame) needs target=COLUMN, the column that holds the labels")
        named = frames + ([validation] if validation is not None else [])
        digest = hashlib.sha256()
        for frame in named:
            digest.update(frame_bytes(frame))
        digest.update(target.encode() + options + (b"validation" if validation is not None else b""))
        name = f"frame-{digest.hexdigest()[:12]}"
        if not store.exists(name):
            import_dataframe(store, name, frames[0], target, test_df=frames[1] if len(frames) == 2 else None,
                             validation_df=validation, test_fraction=test_fraction, task=task)
        if len(frames) == 1:
            note_held_out(store, name, test_fraction)
        return name
    if validation is not None:
        raise ConfigError("fit(validation=DataFrame) goes with data given as a frame or (train_df, test_df)")
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 4):
            raise ConfigError(f"fit(data=...) takes (x, y) or (x, y, x_test, y_test) arrays, not {len(data)} items")
        arrays = [np.asarray(a) for a in data]
        digest = hashlib.sha256()
        for a in arrays:
            digest.update(json.dumps([a.shape, str(a.dtype)]).encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        digest.update(options)
        name = f"arrays-{digest.hexdigest()[:12]}"
        if not store.exists(name):
            import_arrays(store, name, *arrays, test_fraction=test_fraction, task=task)
        if len(arrays) == 2:
            note_held_out(store, name, test_fraction)
        return name
    raise ConfigError(f"fit(data=...) takes a dataset name, (x, y) arrays, a DataFrame or (train_df, test_df), "
                      f"not {type(data).__name__}")


def options_key(task: str | None, test_fraction: float) -> bytes:
    """The import options in a content name; empty for the defaults, so earlier names stay the same."""
    parts = ([f"task={task}"] if task is not None else []) + (
        [f"test_fraction={test_fraction!r}"] if test_fraction != DEFAULT_TEST_FRACTION else [])
    return ";".join(parts).encode()


def frame_bytes(frame: Any) -> bytes:
    import pyarrow as pa

    from pipeline.data.frames import as_table

    table = as_table("dataframe", frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def note_held_out(store: Any, name: str, test_fraction: float) -> None:
    """Say, not silently do: the rows a single frame or (x, y) lost to the test split."""
    rows = store.info(name).rows
    print(f"note: fit held out {rows.get('test', 0)} of {rows.get('train', 0) + rows.get('test', 0)} rows "
          f"({test_fraction:.0%}, seeded) as the test split of dataset '{name}'; pass data=(train_df, test_df) "
          "or (x, y, x_test, y_test) to choose them, or test_fraction=", file=sys.stderr)
