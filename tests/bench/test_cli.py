"""`pipeline bench` through the command line: a tiny suite end to end, and bad names."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.bench import points
from pipeline.bench.points import SMOKE, Point


def test_unknown_suite_lists_the_valid_ones(cli):
    r = cli("bench", "nosuch")
    assert r.code == 2
    assert "error: unknown suite or point 'nosuch'" in r.err
    assert "cpu-small" in r.err and "mlp-h32-b32" in r.err and "Traceback" not in r.err


def test_misspelt_suite_gets_a_suggestion(cli):
    r = cli("bench", "cpu-smal")
    assert r.code == 2 and "did you mean cpu-small" in r.err


def test_unknown_peer(cli):
    r = cli("bench", "tiny", "--peers", "pipeline,nope")
    assert r.code == 2 and "unknown peer 'nope'" in r.err and "torch_eager" in r.err


def test_list(cli):
    r = cli("bench", "--list")
    assert r.code == 0 and "cpu-small: mlp-h32-b32, cnn-c8-16-b32" in r.out and "lm-1b" in r.out


@pytest.mark.heavy
def test_tiny_suite_end_to_end(cli, tmp_path, monkeypatch):
    # A model that cannot fit comes first: it is recorded as out of memory and the run goes on.
    huge = Point("huge-mlp", "mlp", "images:16x16x1", 16, overrides=("model.hidden=2097152,2097152",), budget=SMOKE)
    monkeypatch.setitem(points.POINTS, "huge-mlp", huge)
    out = tmp_path / "results"
    r = cli("bench", "huge-mlp", "tiny", "--peers", "pipeline,jax_bare,jax_bare_scan,torch_eager",
            "--out", str(out), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["table"] == str(out / "bench.parquet")
    table = pq.read_table(out / "bench.parquet").to_pylist()
    assert len(table) == len(summary["rows"]) == 10
    rows = {(t["point"], t["impl"]): t for t in table}
    assert rows[("huge-mlp", "pipeline")]["status"] == "out of memory"
    assert "parameters" in rows[("huge-mlp", "pipeline")]["detail"]
    pipe = rows[("tiny-mlp", "pipeline")]
    assert pipe["status"] == "ok" and pipe["suite"] == "tiny"
    bare = rows[("tiny-mlp", "jax_bare")]  # timed round-robin: the median of the ratios of paired rounds
    assert bare["step_s_min"] / pipe["step_s_max"] <= pipe["vs_jax_bare"] <= bare["step_s_max"] / pipe["step_s_min"]
    assert 100 <= pipe["steps_per_call"] <= 1000  # K from the measured per-call overhead
    assert pipe["flops_xla"] > 0 and 0 <= pipe["input_share"] <= 1
    assert pipe["backend"] == "cpu" and pipe["jax"] and pipe["params"] == 8 * 8 * 8 + 8 + 8 * 10 + 10
    assert rows[("tiny-mlp", "torch_compile")]["status"] == "skipped"
    assert rows[("tiny-mlp", "torch_eager")]["status"] in ("ok", "not installed")
    assert (out / "bench.md").read_text().count("tiny-mlp") >= 2
    assert (out / "bench.png").stat().st_size > 0
    assert "| tiny-mlp |" in r.out  # the side-by-side table on standard output


def test_data_suite_reader_rows(cli, tmp_path, monkeypatch):
    small = Point("tiny-read", "data", "table:4096x8", 256, budget=SMOKE)
    monkeypatch.setitem(points.POINTS, "tiny-read", small)
    out = tmp_path / "results"
    r = cli("bench", "tiny-read", "--out", str(out), "--json")
    assert r.code == 0, r.err
    rows = {t["impl"]: t for t in pq.read_table(out / "bench.parquet").to_pylist()}
    assert set(rows) == {"pyarrow_read", "store_read", "stream_reader"}
    plain = rows["pyarrow_read"]
    assert plain["status"] == "ok" and plain["vs_pyarrow_read"] == 1.0
    assert plain["bytes_per_s"] == pytest.approx(plain["examples_per_s"] * (8 * 4 + 4))
    assert rows["stream_reader"]["status"] in ("ok", "unavailable")


def test_points_past_the_deadline_are_skipped(tmp_path):
    from pipeline.bench.run import run_bench

    rows = run_bench(["tiny"], tmp_path, deadline=0.0, echo=lambda s: None)
    assert [r["status"] for r in rows] == ["skipped"] * 5
    assert rows[0]["detail"] == "time budget spent" and rows[0].get("steps_per_s") is None
    assert pq.read_table(tmp_path / "bench.parquet").num_rows == 5
