"""What the host remembers about each trial, and the two tables of a sweep folder.

``trials.parquet``: one row per trial (id, group, the search round that asked it (0 for grid and
random), every swept hyperparameter as its own
column, status, final and best metrics with the step of the best, steps, wall time and
the exact override list that re-runs it with ``pipeline train``).
``curves.parquet/``: every trial's metrics in long format (trial, step, split, name, value), a
Parquet dataset folder with one part per population (``part-gGGGGGG-cCCCCCC.parquet``).
Both are written through a new temporary file, fsync and a rename (``pipeline.durable.files``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.durable.files import make_folders, write_parquet
from pipeline.durable.records import CorruptFile, parquet_files, read_parquet, read_parquet_files
from pipeline.sweep.grouping import Trial
from pipeline.sweep.space import format_value
from pipeline.track.metrics import MEMBERS_SCHEMA
from pipeline.train.evaluation import FINISHED, Bookkeeping

METRIC_COLUMN = re.compile(r"^(?P<kind>final|best)_(?P<split>val|test)_(?P<name>.+)$")

# A population's metrics table without the wall time (members of one population share it).
CURVES_SCHEMA = pa.schema([f for f in MEMBERS_SCHEMA if f.name != "wall_s"])
# Dictionary pages for the columns of a few distinct strings only: steps and values are nearly all
# distinct, and trying a dictionary for them first is a third of the time a part takes to encode.
CURVES_ENCODING = {"use_dictionary": ["split", "name"]}


# A trial's record is the engine's bookkeeping of that member.
TrialRecord = Bookkeeping


def _word_ranks(column: pa.ChunkedArray) -> np.ndarray:
    """Each row's string as its rank among the column's distinct strings (a handful: splits, metric names)."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    words = np.array(encoded.dictionary.to_pylist(), dtype=object)
    return np.argsort(np.argsort(words))[np.asarray(encoded.indices)]


def curves_order(table: pa.Table) -> pa.Table:
    """Rows by trial, split, name and step: ``sort_by`` on those columns, without sorting strings row by
    row (a population's part is tens of thousands of rows of a few distinct names)."""
    keys = (np.asarray(table.column("step")), _word_ranks(table.column("name")), _word_ranks(table.column("split")),
            np.asarray(table.column("trial")))
    return table.take(pa.array(np.lexsort(keys)))


def curves_part(key: str) -> str:
    """The part of ``curves.parquet/`` with one population's rows: ``g3-c12`` -> ``part-g000003-c000012.parquet``."""
    padded = re.sub(r"\d+", lambda m: m.group(0).zfill(6), key)
    return f"part-{re.sub(r'[^A-Za-z0-9_-]', '_', padded)}.parquet"


def merge_curves(path: Path, new: pa.Table, key: str | None = None) -> pa.Table:
    """Record the curves of one population (``key``, e.g. its checkpoint folder's name ``g0-c1``);
    returns them as recorded.

    ``curves.parquet`` is a Parquet dataset folder with one part per population, written
    through a new temporary file and a rename: a population that runs again (a resumed sweep)
    replaces its own part, so no row is ever duplicated, and nothing else is read or rewritten.
    A sweep recorded before (``curves.parquet`` one file) keeps being rewritten whole.
    """
    new = curves_order(new.select(CURVES_SCHEMA.names).cast(CURVES_SCHEMA).combine_chunks())
    if path.is_file():
        old = read_parquet(path).cast(CURVES_SCHEMA)
        ids = pa.array(np.unique(np.asarray(new.column("trial"))), pa.int32())
        keep = pc.invert(pc.is_in(old.column("trial"), value_set=ids))
        merged = pa.concat_tables([old.filter(keep), new])
        write_parquet(curves_order(merged.combine_chunks()), path, **CURVES_ENCODING)
        return new
    if key is None:  # named by its trials: the same population always lands in the same part
        trials = np.unique(np.asarray(new.column("trial")))
        key = f"t{int(trials[0]) if len(trials) else 0}"
    make_folders(path)
    write_parquet(new, path / curves_part(key), **CURVES_ENCODING)
    return new


def read_curves(path: Path) -> pa.Table:
    """Every trial's curves (a folder of parts, or the single file of an older sweep)."""
    return read_parquet_files(parquet_files(path), CURVES_SCHEMA)


def metric_curves(curves: pa.Table, split: str, name: str, trials: list[int]) -> dict[int, dict[int, float]]:
    """``trials``' values of ``split``/``name`` at each step they were evaluated: {trial: {step: value}}."""
    picked = curves.filter(pc.and_(pc.equal(curves.column("split"), split), pc.equal(curves.column("name"), name)))
    picked = picked.filter(pc.is_in(picked.column("trial"), value_set=pa.array(trials, pa.int32())))
    out: dict[int, dict[int, float]] = {}
    for trial, step, value in zip(*(picked.column(c).to_pylist() for c in ("trial", "step", "value"))):
        out.setdefault(trial, {})[step] = value
    return out


def _hp_column(values: list[Any]) -> pa.Array:
    if all(isinstance(v, tuple) for v in values):  # model.hidden=64,64: spelled as on the command line
        return pa.array([format_value(v) for v in values], pa.string())
    return pa.array(values)


def trials_table(trials: list[Trial], records: dict[int, TrialRecord], swept: list[str],
                 rounds: dict[int, int] | None = None) -> pa.Table:
    rows_metrics: dict[str, list] = {}
    finals = [{f"final_{s}_{n}": v for s, m in records[t.id].last_eval.items() for n, v in m.items()} for t in trials]
    bests = [{f"best_{s}_{n}": v for s, m in records[t.id].best_eval.items() for n, v in m.items()} for t in trials]
    metric_names = list(dict.fromkeys(k for row in finals + bests for k in row))
    for name in sorted(metric_names, key=lambda k: (not k.startswith("final_"), k)):
        source = finals if name.startswith("final_") else bests
        rows_metrics[name] = [row.get(name, float("nan")) for row in source]
    columns: dict[str, Any] = {
        "trial": pa.array([t.id for t in trials], pa.int32()),
        "group": pa.array([t.group for t in trials], pa.int32()),
        "round": pa.array([(rounds or {}).get(t.id, 0) for t in trials], pa.int32()),
        "status": pa.array([records[t.id].status for t in trials], pa.string()),
        "steps": pa.array([records[t.id].steps for t in trials], pa.int64()),
        "wall_s": pa.array([records[t.id].wall_s for t in trials], pa.float64()),
    }
    for key in swept:
        columns[key] = _hp_column([t.values[key] for t in trials])
    for name, vals in rows_metrics.items():
        columns[name] = pa.array(vals, pa.float64())
    columns["best_step"] = pa.array([records[t.id].best_step for t in trials], pa.int64())
    columns["stopped_at"] = pa.array([records[t.id].stopped_at for t in trials], pa.int64())
    columns["overrides"] = pa.array([t.overrides for t in trials], pa.list_(pa.string()))
    return pa.table(columns)


def read_records(path: Path) -> dict[int, TrialRecord]:
    """The finished trials of an earlier (interrupted) sweep, rebuilt from ``trials.parquet``.

    A damaged table is one line naming it (``CorruptFile``).
    """
    if not path.is_file():
        return {}
    rows = read_parquet(path).to_pylist()
    out = {}
    try:
        for row in rows:
            if row["status"] not in FINISHED:
                continue
            rec = TrialRecord(status=row["status"], steps=int(row["steps"]), wall_s=float(row["wall_s"]),
                              stopped_at=row["stopped_at"], best_step=row["best_step"])
            for col, value in row.items():
                match = METRIC_COLUMN.match(col)
                if match and value is not None and not math.isnan(value):
                    target = rec.last_eval if match["kind"] == "final" else rec.best_eval
                    target.setdefault(match["split"], {})[match["name"]] = value
            out[int(row["trial"])] = rec
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(f"{path}: damaged record ({type(exc).__name__}: {exc})") from None
    return out
