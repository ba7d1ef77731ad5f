"""`pipeline runs list` shows what tells runs of one experiment apart: the hyperparameters that differ
among them, read from each run's config.json, in one short column."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.track.hparams import WIDTH, cell, differing_keys
from tests.test_runs_list import table_of

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

QUICK = ["steps=20", "eval_every=10", "plot=false", "--no-progress"]


def test_runs_of_one_experiment_show_the_keys_they_differ_in(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("PIPELINE_RUNS", "runs")
    for name, overrides in (("a", ["model.hidden=8", "optimizer.learning_rate=0.001"]),
                            ("b", ["model.hidden=8", "optimizer.learning_rate=0.01"]),
                            ("c", ["model.hidden=16,16", "optimizer.learning_rate=0.001"])):
        r = cli("train", "digits_mlp", *overrides, *QUICK, "--run-dir", f"runs/{name}")
        assert r.code == 0, r.err
    assert cli("train", "regression_mlp", "model.hidden=8", *QUICK, "--run-dir", "runs/d").code == 0
    r = cli("runs", "list")
    assert r.code == 0 and r.err == "", r.err
    rows = table_of(r.out)
    assert list(rows[0])[:5] == ["run", "experiment", "data", "steps", "hparams"]
    assert {row["run"]: row["hparams"] for row in rows} == {
        "runs/a": "hidden=8 lr=0.001", "runs/b": "hidden=8 lr=0.01", "runs/c": "hidden=16,16 lr=0.001",
        "runs/d": ""}  # alone in its experiment: nothing to tell apart
    assert all(len(row["hparams"]) <= WIDTH for row in rows)


def test_no_column_when_nothing_differs(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    from tests.test_reliability_runs import fake_run

    fake_run(Path("runs/a"))
    fake_run(Path("runs/b"))
    rows = table_of(cli("runs", "list", "--runs", "runs").out)
    assert "hparams" not in rows[0]


def test_the_cell_is_short():
    configs = [{"optimizer": {"learning_rate": 0.1, "weight_decay": 0.0, "b1": 0.9}, "model": {"dropout": 0.0},
                "seed": 0, "plot": True, "data": {"name": "x", "prefetch": 2}},
               {"optimizer": {"learning_rate": 0.01, "weight_decay": 1e-4, "b1": 0.95}, "model": {"dropout": 0.1},
                "seed": 1, "plot": False, "data": {"name": "y", "prefetch": 4}}]
    keys = differing_keys(configs)
    assert keys == ["optimizer.learning_rate", "optimizer.weight_decay", "optimizer.b1", "model.dropout", "seed"]
    assert cell(configs[1], keys) == "lr=0.01 wd=0.0001 b1=0.95 +2"  # 30 characters at most, the rest counted
    assert cell(configs[1], keys, width=200) == "lr=0.01 wd=0.0001 b1=0.95 dropout=0.1 seed=1"
    clash = [{"model": {"dropout": 0.0}, "augment": {"dropout": 0.0}}, {"model": {"dropout": 0.1},
                                                                          "augment": {"dropout": 0.2}}]
    assert cell(clash[1], differing_keys(clash), width=200) == "model.dropout=0.1 augment.dropout=0.2"
