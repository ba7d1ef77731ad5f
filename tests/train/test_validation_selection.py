"""No decision reads the test split: best checkpoint, early stopping, rungs and sweep ranking read
validation, carved from train by a seed of the dataset (``data.validation_seed``), not of the trial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Config, OptimizerConfig, apply_overrides
from pipeline.data import Store, ensure_dataset, import_arrays
from pipeline.models import MLPConfig
from pipeline.sweep import grouping, strategy
from pipeline.sweep.space import parse_space
from pipeline.train.prepare import read_splits, train_rows
from tests.conftest import records_under, run_cli

TINY = Config(data="digits", steps=60, batch_size=16, eval_every=20, model=MLPConfig(hidden=(8,)),
              optimizer=OptimizerConfig(name="adam", learning_rate=1e-2))
QUIET = ["--no-progress", "plot=false"]
ADVICE = "needs a validation split: set data.validation_fraction (e.g. 0.1) or import the dataset with one"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store holding digits as ``clean`` and as ``poisoned`` (the same rows, its test labels shuffled)."""
    with records_under(tmp_path_factory.mktemp("selection")) as root:
        store = Store(root / "data")
        digits = ensure_dataset(store, "digits")
        train, test = store.read(digits.name, "train"), store.read(digits.name, "test")
        shuffled = np.random.default_rng(0).permutation(test.y)
        assert (shuffled != test.y).mean() > 0.8
        import_arrays(store, "clean", train.x, train.y, test.x, test.y)
        import_arrays(store, "poisoned", train.x, train.y, test.x, shuffled)
        yield root


def val_rows(cfg: Config, store: Store) -> np.ndarray:
    splits = read_splits(cfg, store, ensure_dataset(store, cfg.data.name))
    assert len(splits["train"]) == train_rows(cfg, ensure_dataset(store, cfg.data.name))
    return splits["val"].x


def test_the_carve_is_a_property_of_the_dataset_not_of_the_trial(home):
    store = Store(home / "data")
    assert TINY.data.validation_fraction == 0.1 and TINY.data.validation_seed == 0
    rows = val_rows(TINY, store)
    assert len(rows) == round(0.1 * 1438)
    for other in (["seed=1"], ["data_seed=7"], ["seed=3", "data_seed=1"]):
        np.testing.assert_array_equal(val_rows(apply_overrides(TINY, other), store), rows)
    moved = val_rows(apply_overrides(TINY, ["data.validation_seed=1"]), store)
    assert moved.shape == rows.shape and not np.array_equal(moved, rows)


def test_a_sweep_over_seeds_is_one_population(home):
    store = Store(home / "data")
    space = parse_space(TINY, ["seed=choice(0;1)", "optimizer.learning_rate=choice(1e-3;1e-2)"])
    trials = grouping.make_trials(TINY, space, strategy.trials(space, "grid", None, 0))
    groups = grouping.make_groups(trials, {"digits": ensure_dataset(store, "digits")})
    assert len(groups) == 1 and groups[0].trials == [0, 1, 2, 3]
    assert groups[0].total_steps == 60


def train_json(*args: str) -> dict:
    r = run_cli("train", "digits_mlp", "model.hidden=16", "batch_size=32", *args, *QUIET, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def early_stopped(home) -> dict[str, dict]:
    """One early-stopped run per dataset: a learning rate high enough to peak and wobble."""
    return {name: train_json(f"data={name}", "steps=600", "eval_every=20", "patience=3",
                             "optimizer.learning_rate=0.05") for name in ("clean", "poisoned")}


def test_poisoned_test_labels_change_no_decision_of_a_run(early_stopped):
    clean, poisoned = early_stopped["clean"], early_stopped["poisoned"]
    assert clean["stopped_early"] and poisoned["stopped_early"]
    assert clean["steps"] == poisoned["steps"] < 600  # the early-stopping step
    assert clean["best"]["step"] == poisoned["best"]["step"] < clean["steps"]  # the selected step
    assert clean["best"]["split"] == "val" and clean["best"]["value"] == poisoned["best"]["value"]
    assert clean["best"]["metrics"]["val/accuracy"] == poisoned["best"]["metrics"]["val/accuracy"]
    # ... while the test metrics, recorded for reporting, do change.
    assert clean["metrics"]["test/accuracy"] > 0.8 > 0.3 > poisoned["metrics"]["test/accuracy"]
    assert clean["best"]["metrics"]["test/accuracy"] > 0.8 > 0.3 > poisoned["best"]["metrics"]["test/accuracy"]
    assert clean["selection"] == {"split": "val", "metric": "accuracy"}


def test_the_summary_reports_test_metrics_at_the_final_and_the_selected_step(early_stopped, home):
    import pyarrow.parquet as pq

    summary = early_stopped["clean"]
    table = pq.read_table(Path(summary["run_dir"]) / "metrics.parquet").to_pydict()
    at = {(s, sp, n): v for s, sp, n, v in zip(table["step"], table["split"], table["name"], table["value"],
                                                strict=True)}
    best, last = summary["best"]["step"], summary["steps"]
    assert summary["best"]["metrics"]["test/accuracy"] == at[(best, "test", "accuracy")]
    assert summary["metrics"]["test/accuracy"] == at[(last, "test", "accuracy")]
    assert summary["best"]["value"] == at[(best, "val", "accuracy")]


SWEEP = ["model.hidden=16", "steps=60", "eval_every=20", "batch_size=32",
         "optimizer.learning_rate=choice(1e-4;1e-3;1e-2;3e-2)", "--rungs", "20", "--keep", "0.5", "--vmap"]


def sweep_json(*args: str) -> dict:
    r = run_cli("sweep", "digits_mlp", *SWEEP, *args, *QUIET, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


def test_poisoned_test_labels_change_no_ranking_nor_rung_of_a_sweep(home):
    import pyarrow.parquet as pq

    def trials(summary: dict) -> list[dict]:
        rows = pq.read_table(Path(summary["sweep_dir"]) / "trials.parquet").to_pylist()
        return sorted(rows, key=lambda r: r["trial"])

    clean, poisoned = sweep_json("data=clean"), sweep_json("data=poisoned")
    a, b = trials(clean), trials(poisoned)
    assert [(r["status"], r["stopped_at"]) for r in a] == [(r["status"], r["stopped_at"]) for r in b]
    assert sorted(r["status"] for r in a) == ["done", "done", "stopped", "stopped"]  # the rung's survivors
    assert [r["final_val_accuracy"] for r in a] == [r["final_val_accuracy"] for r in b]
    assert clean["selection"] == poisoned["selection"] == "val/accuracy"
    assert clean["best"]["trial"] == poisoned["best"]["trial"]
    assert clean["best"]["best_metrics"]["val/accuracy"] == poisoned["best"]["best_metrics"]["val/accuracy"]
    assert clean["best"]["metrics"]["test/accuracy"] > 0.5 > poisoned["best"]["metrics"]["test/accuracy"]
    assert "test/accuracy" in clean["best"]["best_metrics"]


def test_a_run_without_validation_selects_nothing(cli, tmp_path):
    r = cli("train", "digits_mlp", "data.validation_fraction=0", "steps=40", "eval_every=20", "model.hidden=8",
            *QUIET, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["selection"]["split"] == "none" and "final step" in summary["selection"]["note"]
    assert summary["best"]["step"] == summary["steps"] == 40 and summary["best"]["split"] is None
    assert summary["best"]["metrics"] == summary["metrics"] and "val/accuracy" not in summary["metrics"]


@pytest.mark.parametrize("args, what", [
    (["patience=2"], "patience"),
    (["best_metric=loss"], "best_metric"),
], ids=["patience", "best_metric"])
def test_selection_without_validation_is_refused(cli, tmp_path, args, what):
    r = cli("train", "digits_mlp", "data.validation_fraction=0", *args, "--runs", str(tmp_path / "runs"), *QUIET)
    assert r.code == 2 and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert r.err.startswith(f"error: '{what}' {ADVICE}"), r.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--rungs", "20"], []], ids=["rungs", "ranking"])
def test_a_sweep_without_validation_is_refused(cli, tmp_path, monkeypatch, args):
    monkeypatch.setenv("PIPELINE_SWEEPS", str(tmp_path / "sweeps"))
    r = cli("sweep", "digits_mlp", "data.validation_fraction=0", "optimizer.learning_rate=choice(1e-3;1e-2)",
            "steps=40", "eval_every=20", *args, *QUIET)
    assert r.code == 2 and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert ADVICE in r.err and "selection.split=test" in r.err, r.err
    assert not (tmp_path / "sweeps").exists()


def test_selecting_on_test_explicitly_works_and_is_flagged(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_SWEEPS", str(tmp_path / "sweeps"))
    r = cli("train", "digits_mlp", "data.validation_fraction=0", "selection.split=test", "patience=1",
            "steps=200", "eval_every=20", "model.hidden=8", "optimizer.learning_rate=1e-12", *QUIET, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["best"]["split"] == "test" and summary["best"]["step"] == 20 and summary["steps"] == 40
    assert summary["selection"]["split"] == "test" and "optimistic" in summary["selection"]["flag"]
    stored = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    assert stored["selection"] == summary["selection"]
    shown = cli("runs", "show", summary["run_dir"])
    assert shown.code == 0 and "selection read the test split" in shown.out

    swept = cli("sweep", "digits_mlp", "data.validation_fraction=0", "selection.split=test", "steps=40",
                "eval_every=20", "model.hidden=8", "optimizer.learning_rate=choice(1e-3;1e-2)",
                *QUIET, "--json")
    assert swept.code == 0, swept.err
    sweep_summary = json.loads(swept.out.strip().splitlines()[-1])
    assert sweep_summary["selection"] == "test/accuracy"
    assert "optimistic" in sweep_summary["selection_flag"]
    stored = json.loads((Path(sweep_summary["sweep_dir"]) / "summary.json").read_text())
    assert stored["selection_flag"] == sweep_summary["selection_flag"]
