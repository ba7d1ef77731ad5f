"""The results table round-trips through plain pyarrow; appends keep earlier rows."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline.bench.results import SCHEMA, TABLE, append, to_table


def rows(run_id: str) -> list[dict]:
    return [
        {"run_id": run_id, "suite": "cpu-small", "point": "p", "impl": "pipeline", "status": "ok",
         "batch": 32, "steps_per_s": 1234.5, "mfu": 0.125, "params": 2410, "vs_jax_bare": 1.5,
         "mem_peak_bytes": None},
        {"run_id": run_id, "suite": "cpu-small", "point": "p", "impl": "torch_eager", "status": "not installed",
         "detail": "pip install -e '.[bench]' adds PyTorch", "batch": 32},
    ]


def test_round_trip_with_plain_pyarrow(tmp_path):
    append(tmp_path, rows("a"))
    append(tmp_path, rows("b"))
    table = pq.read_table(tmp_path / TABLE)
    assert table.schema.equals(SCHEMA)
    data = table.to_pylist()
    assert [r["run_id"] for r in data] == ["a", "a", "b", "b"]
    assert data[0]["steps_per_s"] == 1234.5 and data[0]["mfu"] == 0.125 and data[0]["params"] == 2410
    assert data[1]["status"] == "not installed"
    assert data[1]["steps_per_s"] is None and data[1]["vs_jax_bare"] is None  # missing, never zero


def test_unknown_column_is_refused():
    with pytest.raises(ValueError, match="no_such_column"):
        to_table([{"no_such_column": 1}])
