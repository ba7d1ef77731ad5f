"""`pipeline runs list`: one table over runs of different tasks, each cell under its own header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.track.table import print_table
from tests.test_reliability_runs import fake_run

QUICK = ["model.hidden=8", "steps=20", "eval_every=10", "plot=false", "--no-progress", "--no-compile-cache",
         "--json"]


def table_of(out: str) -> list[dict[str, str]]:
    """The rows of a printed table as {header: cell}; fails if a row was wrapped onto more lines."""
    lines = out.splitlines()
    headers = [h.strip() for h in next(line for line in lines if "┃" in line).strip("┃ ").split("┃")]
    rows = []
    for line in lines:
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip()[1:-1].split("│")]
            assert len(cells) == len(headers), line
            rows.append(dict(zip(headers, cells)))
    return rows


def listed(cli, runs: str) -> tuple[list[str], list[dict[str, str]]]:
    r = cli("runs", "list", "--runs", runs)
    assert r.code == 0 and r.err == "", r.err
    rows = table_of(r.out)
    assert rows, r.out
    return list(rows[0]), rows


def test_runs_of_different_tasks_each_value_under_its_header(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)  # short run paths: no row is wrapped
    fake_run(Path("runs/a-class"), metrics={"test/accuracy": 0.91, "test/loss": 0.31})
    # Four test metrics, r2 the last: every metric is listed, not only the first few.
    fake_run(Path("runs/b-regr"), experiment="regression_mlp", data="regression",
             metrics={"test/loss": 0.26, "test/mae": 0.41, "test/mse": 0.27, "test/r2": 0.81})
    fake_run(Path("runs/c-val"), metrics={"test/accuracy": 0.92, "test/loss": 0.32,
                                          "val/accuracy": 0.93, "val/loss": 0.33}, steps=7)

    headers, rows = listed(cli, "runs")
    assert headers == ["run", "experiment", "data", "steps", "test/accuracy", "test/loss", "test/mae", "test/mse",
                       "test/r2", "val/accuracy", "val/loss"]
    blank = dict.fromkeys(headers[4:], "")
    assert rows == [
        {"run": "runs/a-class", "experiment": "digits_mlp", "data": "digits", "steps": "10",
         **blank, "test/accuracy": "0.91", "test/loss": "0.31"},
        {"run": "runs/b-regr", "experiment": "regression_mlp", "data": "regression", "steps": "10",
         **blank, "test/loss": "0.26", "test/mae": "0.41", "test/mse": "0.27", "test/r2": "0.81"},
        {"run": "runs/c-val", "experiment": "digits_mlp", "data": "digits", "steps": "7",
         **blank, "test/accuracy": "0.92", "test/loss": "0.32", "val/accuracy": "0.93", "val/loss": "0.33"},
    ]


def test_an_unfinished_run_has_blank_metrics(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    fake_run(Path("runs/a-done"), metrics={"test/r2": 0.5})
    (fake_run(Path("runs/b-running"), data="regression") / "summary.json").unlink()
    headers, rows = listed(cli, "runs")
    assert headers == ["run", "experiment", "data", "steps", "test/r2"]
    assert [(r["data"], r["steps"], r["test/r2"]) for r in rows] == [("digits", "10", "0.5"),
                                                                      ("regression", "unfinished", "")]


def test_trained_classification_and_regression_runs(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("PIPELINE_RUNS", "runs")
    summaries = {}
    for experiment in ("digits_mlp", "regression_mlp"):
        r = cli("train", experiment, *QUICK)
        assert r.code == 0, r.err
        summary = json.loads(r.out.strip().splitlines()[-1])
        summaries[summary["run_dir"]] = summary

    headers, rows = listed(cli, "runs")
    metrics = [h for h in headers if "/" in h]
    assert {"test/accuracy", "test/r2"} <= set(metrics)
    assert len(rows) == 2
    for row in rows:
        summary = summaries[row["run"]]
        assert (row["experiment"], row["data"], row["steps"]) == (
            summary["experiment"], summary["data"], str(summary["steps"]))
        assert {m: row[m] for m in metrics} == {
            m: f"{summary['metrics'][m]:.4g}" if m in summary["metrics"] else "" for m in metrics}
    by_data = {row["data"]: row for row in rows}
    assert by_data["digits"]["test/accuracy"] and not by_data["digits"]["test/r2"]
    assert by_data["regression"]["test/r2"] and not by_data["regression"]["test/accuracy"]


@pytest.mark.parametrize("rows", [
    [{"a": 1, "b": 2.5}, {"c": "x", "a": 3}],
    [{"b": 2.5, "a": 1}, {"a": 3, "c": "x", "b": None}],
])
def test_print_table_places_cells_by_key(rows, capsys):
    print_table(rows)
    printed = table_of(capsys.readouterr().out)
    headers = list(dict.fromkeys(k for row in rows for k in row))
    assert [list(r) for r in printed] == [headers] * 2
    assert [(r["a"], r["b"], r["c"]) for r in printed] == [("1", "2.5", ""), ("3", "", "x")]
