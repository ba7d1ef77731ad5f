"""`pipeline runs plot RUN RUN SWEEP@TRIAL --out FILE`: several runs and sweep trials in one picture."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.track.runs import curves_of


def test_runs_and_a_sweep_trial_overlaid(cli, workdir, monkeypatch):
    monkeypatch.setenv("PIPELINE_SWEEPS", str(workdir / "sweeps"))
    quick = ["model.hidden=8", "steps=40", "eval_every=20", "plot=false", "--no-progress", "--json"]
    runs = []
    for lr in ("1e-3", "1e-2"):
        r = cli("train", "digits_mlp", f"optimizer.learning_rate={lr}", *quick)
        assert r.code == 0, r.err
        runs.append(json.loads(r.out.strip().splitlines()[-1])["run_dir"])
    r = cli("sweep", "digits_mlp", "seed=range(2)", *quick)
    assert r.code == 0, r.err
    sweep = json.loads(r.out.strip().splitlines()[-1])["sweep_dir"]

    label, table = curves_of(f"{sweep}@1")
    curves = pq.read_table(Path(sweep) / "curves.parquet").to_pydict()
    mine = [v for t, v in zip(curves["trial"], curves["value"]) if t == 1]
    assert label.endswith("@1") and table["value"] == mine and set(table["trial"]) == {1}
    assert curves_of(runs[0])[1]["value"] == pq.read_table(Path(runs[0]) / "metrics.parquet").to_pydict()["value"]

    out = workdir / "compare.png"
    r = cli("runs", "plot", *runs, f"{sweep}@1", "--out", str(out))
    assert r.code == 0, r.err
    assert r.out.strip() == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli("runs", "plot", runs[0], f"{sweep}@9", "--out", str(out))
    assert r.code == 2 and r.err.strip() == f"error: {sweep}@9: the sweep has no curves for trial 9"
