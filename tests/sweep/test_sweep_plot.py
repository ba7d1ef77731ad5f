"""A finished sweep draws its plots in a background process unless the command says ``plot=false``: the
command's fixed values decide it, not the experiment's own config (which says true)."""

from __future__ import annotations

import pytest

import pipeline
from pipeline.sweep import pbt_run, runner

SPACE = {"optimizer.learning_rate": "choice(0.01;0.03)"}
TINY = ["model.hidden=16", "steps=40", "eval_every=20", "batch_size=32"]


@pytest.fixture
def drawn(monkeypatch) -> list:
    started: list = []
    monkeypatch.setattr(runner, "plot_later", started.append)
    monkeypatch.setattr(pbt_run, "plot_later", started.append)
    return started


@pytest.mark.parametrize(("plot", "draws"), [([], True), (["plot=false"], False)], ids=["default", "plot=false"])
def test_a_grid_sweep_plots_as_its_command_says(tmp_path, drawn, plot, draws):
    result = pipeline.sweep("digits_mlp", SPACE, overrides=[*TINY, *plot], sweep_dir=tmp_path / "s")
    assert drawn == ([result.sweep_dir] if draws else [])


def test_a_search_and_pbt_draw_nothing_with_plot_false(tmp_path, drawn):
    pytest.importorskip("optuna")
    space = {"optimizer.learning_rate": "loguniform(1e-3,1e-1)"}
    pipeline.sweep("digits_mlp", space, strategy="tpe", trials=2, max_population=2,
                   overrides=[*TINY, "plot=false"], sweep_dir=tmp_path / "tpe")
    pipeline.sweep("digits_mlp", space, strategy="pbt", trials=2, max_population=2,
                   overrides=[*TINY, "pbt.interval=20", "plot=false"], sweep_dir=tmp_path / "pbt")
    assert drawn == []
