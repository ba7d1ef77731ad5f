"""What the learning-curve plots draw, read back from the matplotlib objects: a panel per metric of the
objective (r2 for regression, not mse, a copy of the loss; perplexity for the LM, train and every
evaluation), axes zoomed to the later part of the curves, legends beside the panels, not on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from pipeline.sweep.report import sweep_figures  # noqa: E402
from pipeline.track.metrics import read_metrics  # noqa: E402
from pipeline.track.panels import copies_loss, panel_metrics, zoomed_range  # noqa: E402
from pipeline.track.plot import draw_runs  # noqa: E402

QUICK = ["plot=false", "--no-progress", "--json"]


def panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.lines}


def recorded(run: Path, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    t = read_metrics(run / "metrics.parquet").to_pandas()
    t = t[(t.split == split) & (t.name == name)].sort_values("step")
    return t.step.to_numpy(), t.value.to_numpy()


def assert_legend_beside_the_panels(fig) -> None:
    """One figure legend, outside every panel's drawing area; no panel has a legend of its own."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_visible():
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()


def test_a_regression_run_shows_r2_and_not_mse_a_copy_of_its_loss(cli):
    r = cli("train", "regression_mlp", "steps=60", "eval_every=20", "model.hidden=16", *QUICK)
    assert r.code == 0, r.err
    run = Path(json.loads(r.out.strip().splitlines()[-1])["run_dir"])
    fig = draw_runs([("", read_metrics(run / "metrics.parquet").to_pydict())], run.name)
    drawn = panels(fig)
    assert list(drawn) == ["loss", "mae", "r2"]  # mse equals the loss at every evaluation
    for split in ("val", "test"):
        x, y = lines(drawn["r2"])[split]
        steps, values = recorded(run, split, "r2")
        assert list(x) == list(steps) == [20, 40, 60] and np.array_equal(y, values)
    summary = json.loads((run / "summary.json").read_text())
    assert lines(drawn["r2"])["test"][1][-1] == pytest.approx(summary["metrics"]["test/r2"])
    low, high = drawn["r2"].get_ylim()  # zoomed to the later evaluations, not to the first one
    later = [v for s in ("val", "test") for v in recorded(run, s, "r2")[1][1:]]
    assert low <= min(later) and max(later) <= high
    assert_legend_beside_the_panels(fig)
    plt.close(fig)


def lm_columns(evals: tuple[int, ...] = (50, 100, 150, 200)) -> dict[str, list]:
    """A language model's metrics as the run records them: train loss and bits per byte at every step;
    loss, perplexity and bits per byte of val and test at each evaluation."""
    out: dict[str, list] = {"step": [], "split": [], "name": [], "value": []}

    def add(step, split, name, value):
        for key, v in zip(out, (step, split, name, value)):
            out[key].append(v)

    for step in range(1, 201):
        loss = 5.5 * math.exp(-step / 60) + 2.0
        add(step, "train", "loss", loss)
        add(step, "train", "bits_per_byte", loss / math.log(2))
    for step in evals:
        for split, extra in (("val", 0.05), ("test", 0.08)):
            loss = 5.5 * math.exp(-step / 60) + 2.0 + extra
            add(step, split, "loss", loss)
            add(step, split, "perplexity", math.exp(loss))
            add(step, split, "bits_per_byte", loss / math.log(2))
    return out


def test_the_lm_perplexity_panel_is_a_curve_with_every_evaluation():
    columns = lm_columns()
    fig = draw_runs([("", columns)])
    drawn = panels(fig)
    assert list(drawn) == ["loss", "bits_per_byte", "perplexity"]
    curves = lines(drawn["perplexity"])
    train_loss = np.array([v for s, n, v in zip(columns["split"], columns["name"], columns["value"])
                           if s == "train" and n == "loss"])
    assert np.allclose(curves["train"][1], np.exp(train_loss))  # exp(mean cross-entropy), at every step
    assert list(curves["train"][0]) == list(range(1, 201))
    for split in ("val", "test"):
        x, y = curves[split]
        want = [v for s, n, v in zip(columns["split"], columns["name"], columns["value"])
                if s == split and n == "perplexity"]
        assert list(x) == [50, 100, 150, 200] and np.allclose(y, want)
    plt.close(fig)


def test_accuracy_axis_zoomed_so_097_and_099_look_apart():
    """Two runs climbing from 0.1 (chance) to 0.97 and 0.99: the axis holds their later parts only."""
    series = []
    for label, final in (("a", 0.97), ("b", 0.99)):
        steps = np.arange(10, 1001, 10)
        accuracy = final - (final - 0.1) * np.exp(-steps / 60)
        n = len(steps)
        series.append((label, {"step": [*steps, *steps], "split": ["val"] * n + ["test"] * n,
                               "name": ["accuracy"] * (2 * n), "value": [*accuracy, *(accuracy - 0.005)]}))
        series[-1][1]["step"] += list(steps)
        series[-1][1]["split"] += ["train"] * n
        series[-1][1]["name"] += ["loss"] * n
        series[-1][1]["value"] += list(np.exp(-steps / 200))
    fig = draw_runs(series, "2 runs")
    ax = panels(fig)["accuracy"]
    low, high = ax.get_ylim()
    assert 0.9 < low < 0.965 and 0.99 < high < 1.0  # not 0.1-1.0
    assert (0.99 - 0.97) / (high - low) > 0.3  # the two finals a third of the axis apart, at least
    assert_legend_beside_the_panels(fig)
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {f"{run} {split}" for run in "ab"
                                                                 for split in ("train", "val", "test")}
    plt.close(fig)


def test_panel_choice_and_zoom_as_numbers():
    regression = {"step": [10, 10, 10, 10], "split": ["val"] * 4, "name": ["loss", "mse", "mae", "r2"],
                  "value": [0.2, 0.2, 0.3, 0.9]}
    assert copies_loss([regression], "mse") and not copies_loss([regression], "mae")
    assert panel_metrics([regression]) == ["loss", "mae", "r2"]
    other = {"step": [10, 10], "split": ["val", "val"], "name": ["loss", "mse"], "value": [0.2, 0.5]}
    assert panel_metrics([regression, other]) == ["loss", "mse", "mae", "r2"]  # not a copy in every run
    steps = np.arange(0, 101)
    low, high = zoomed_range([(steps, np.where(steps < 50, 0.1, 0.98))])
    assert low == pytest.approx(0.98 - 0.049) and high == pytest.approx(0.98 + 0.049)  # one value: +-5%
    low, high = zoomed_range([(steps, np.linspace(0.0, 1.0, 101))])
    assert low == pytest.approx(0.5 - 0.08 * 0.5) and high == pytest.approx(1.0 + 0.08 * 0.5)
    assert zoomed_range([(steps, np.full(101, np.nan))]) is None


def test_sweep_curves_show_each_metric_of_the_best_trials_with_the_legend_outside(cli, workdir, monkeypatch):
    monkeypatch.setenv("PIPELINE_SWEEPS", str(workdir / "sweeps"))
    r = cli("sweep", "digits_mlp", "optimizer.learning_rate=choice(0.001,0.01,0.1)", "model.hidden=8", "steps=40",
            "eval_every=20", *QUICK)
    assert r.code == 0, r.err
    sweep = Path(json.loads(r.out.strip().splitlines()[-1])["sweep_dir"])
    figures = sweep_figures(sweep)
    assert set(figures) == {"hparams.png", "curves.png"}
    curves = panels(figures["curves.png"])
    assert list(curves) == ["loss", "accuracy"]
    trials = pq.read_table(sweep / "trials.parquet").to_pylist()
    shown = lines(curves["accuracy"])
    assert len(shown) == 2 * len(trials)  # train and val of each trial; test is not a sweep's business
    for row in trials:
        label = f"trial {row['trial']}: learning_rate={row['optimizer.learning_rate']:.4g}"
        x, y = shown[f"{label} val"]
        curve = pq.read_table(sweep / "curves.parquet").to_pandas()
        mine = curve[(curve.trial == row["trial"]) & (curve.split == "val") & (curve.name == "accuracy")]
        assert list(x) == sorted(mine.step) and np.allclose(y, mine.sort_values("step").value)
        assert y[-1] == pytest.approx(row["final_val_accuracy"])
    for fig in figures.values():
        assert_legend_beside_the_panels(fig)
        plt.close(fig)
