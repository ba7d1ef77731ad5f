"""An exported trial's ``summary.json`` says what selected its best step, and the value there: the
same figures as the sweep's ``trials.parquet``, as a trained run's summary says them."""

from __future__ import annotations

import json

import pytest

from tests.sweep.conftest import TINY, pipeline, sweep

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not


@pytest.mark.parametrize(("experiment", "metric"), [("digits_mlp", "accuracy"), ("regression_mlp", "loss")])
def test_the_exported_best_is_the_trials_record(home, tmp_path, experiment, metric):
    swept = sweep(experiment, "optimizer.learning_rate=choice(0.001,0.01)", *TINY)
    assert swept.summary["selection"] == f"val/{metric}"
    for row in swept.trials:
        target = tmp_path / f"{experiment}-{row['trial']}"
        r = pipeline("sweep", "export", str(swept.folder), "--trial", str(row["trial"]), "--run-dir", str(target))
        assert r.code == 0, r.err
        best = json.loads((target / "summary.json").read_text())["best"]
        assert (best["split"], best["metric"], best["step"]) == ("val", metric, row["best_step"])
        assert best["value"] == row[f"best_val_{metric}"] and best["value"] is not None
        assert best["metrics"][f"val/{metric}"] == best["value"]
        assert best["metrics"]["test/loss"] == row["best_test_loss"]
