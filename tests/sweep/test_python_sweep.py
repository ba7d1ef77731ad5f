"""``pipeline.sweep(...)`` is the command line's sweep: the same summary as ``pipeline sweep --json``,
the same trials, the same one-line errors, and its result exports a trial ``load_run`` reads."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.errors import PipelineError

SPACE = {"optimizer.learning_rate": "loguniform(1e-3,1e-1)"}
FIXED = ["model.hidden=16", "steps=40", "eval_every=20", "batch_size=32", "plot=false"]


def comparable(summary: dict) -> dict:
    """A summary without what differs between two runs of one sweep: its folder and its clocks."""
    return {k: v for k, v in summary.items() if k not in ("sweep_dir", "wall_s", "timing")}


def test_the_python_sweep_returns_what_the_command_prints(cli, tmp_path):
    printed = cli("sweep", "digits_mlp", *(f"{k}={v}" for k, v in SPACE.items()), *FIXED, "--strategy", "random",
                  "--trials", "4", "--max-population", "2", "--sweep-dir", str(tmp_path / "cli"), "--json",
                  "--no-progress")
    assert printed.code == 0, printed.err
    from_cli = json.loads(printed.out.strip().splitlines()[-1])

    result = pipeline.sweep("digits_mlp", SPACE, strategy="random", trials=4, max_population=2, overrides=FIXED,
                            sweep_dir=tmp_path / "py")
    assert comparable(result.summary) == comparable(from_cli)
    assert result.best == from_cli["best"] and result.best["metrics"]["val/accuracy"] > 0.5
    ours, theirs = result.trials, pq.read_table(tmp_path / "cli" / "trials.parquet")
    assert ours.drop(["wall_s"]).equals(theirs.drop(["wall_s"]))

    # The export holds the trial's final weights: on test they score what the sweep recorded at the end.
    exported = result.export(result.best["trial"], tmp_path / "best")
    tested = pipeline.load_run(exported, which="latest").evaluate("digits")
    assert tested["accuracy"] == pytest.approx(result.best["metrics"]["test/accuracy"], abs=1e-6)


def test_a_bad_option_is_the_command_lines_one_line(tmp_path):
    with pytest.raises(PipelineError, match="argument --strategy: invalid choice: 'annealing'"):
        pipeline.sweep("digits_mlp", SPACE, strategy="annealing", overrides=FIXED, sweep_dir=tmp_path / "s")
    with pytest.raises(PipelineError, match="bad value for '--trials': 0 must be at least 1"):
        pipeline.sweep("digits_mlp", SPACE, strategy="random", trials=0, overrides=FIXED, sweep_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
