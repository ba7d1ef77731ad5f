"""Search-space spelling, strategies, grouping and chunking: pure Python, no compilation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.config import Config, apply_overrides
from pipeline.data import DatasetInfo
from pipeline.experiments import load_module
from pipeline.sweep import grouping, strategy
from pipeline.sweep.runner import resolve_space
from pipeline.sweep.space import format_value, parse_space

BASE = Config()


def dims(*items: str):
    return {d.key: d for d in parse_space(BASE, list(items)).dimensions}


def test_spellings():
    d = dims("model.hidden=choice(64;128,128)", "seed=range(4)", "steps=range(10,40,10)",
             "optimizer.learning_rate=logspace(1e-4,1e-1,4)", "optimizer.b1=linspace(0.8,0.9,3)",
             "optimizer.momentum=choice(0.5,0.9)", "data=choice(digits;regression)", "data_seed=range(2,4)")
    assert d["model.hidden"].values == ((64,), (128, 128))
    assert d["seed"].values == (0, 1, 2, 3)
    assert d["steps"].values == (10, 20, 30)
    np.testing.assert_allclose(d["optimizer.learning_rate"].values, [1e-4, 1e-3, 1e-2, 1e-1])
    assert d["optimizer.learning_rate"].log_scale
    np.testing.assert_allclose(d["optimizer.b1"].values, [0.8, 0.85, 0.9])
    assert d["optimizer.momentum"].values == (0.5, 0.9)  # commas separate choices of a scalar key
    assert d["data.name"].values == ("digits", "regression")  # `data` means data.name
    assert d["data_seed"].values == (2, 3)


def test_fixed_values_pin_keys_and_the_last_spelling_wins():
    space = parse_space(BASE, ["seed=range(4)", "steps=50", "seed=3", "optimizer.learning_rate=choice(1e-3;1e-2)"])
    assert [d.key for d in space.dimensions] == ["optimizer.learning_rate"]
    assert space.fixed == ("steps=50", "seed=3")


def test_random_is_seeded_and_inside_its_intervals():
    space = parse_space(BASE, ["optimizer.learning_rate=loguniform(1e-4,1e-1)", "model.dropout=uniform(0,0.5)",
                               "seed=range(10)", "model.hidden=choice(8;16,16)"])
    a = strategy.trials(space, "random", 200, seed=3)
    assert a == strategy.trials(space, "random", 200, seed=3)
    assert a != strategy.trials(space, "random", 200, seed=4)
    lr = np.array([t["optimizer.learning_rate"] for t in a])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1
    assert np.log10(lr).min() < -3.5 and np.log10(lr).max() > -1.5  # log-uniform reaches both decades
    assert {t["seed"] for t in a} == set(range(10))
    assert {t["model.hidden"] for t in a} == {(8,), (16, 16)}
    assert all(0 <= t["model.dropout"] <= 0.5 for t in a)


def test_grid_is_the_cross_product_in_order():
    space = parse_space(BASE, ["optimizer.learning_rate=choice(1e-3;1e-2)", "seed=range(3)"])
    cells = strategy.trials(space, "grid", None, 0)
    assert [(c["optimizer.learning_rate"], c["seed"]) for c in cells] == [
        (1e-3, 0), (1e-3, 1), (1e-3, 2), (1e-2, 0), (1e-2, 1), (1e-2, 2)]


@pytest.mark.parametrize("value", [1e-3, 0.1 + 0.2, 3, (64, 128), True, "relu", math.pi * 1e-7])
def test_override_text_round_trips_exactly(value):
    key = {float: "optimizer.learning_rate", int: "seed", tuple: "model.hidden", bool: "ema_decay",
           str: "model.activation"}[type(value)]
    if isinstance(value, bool):  # a boolean field: the transformer's
        key, base = "model.tie_embeddings", apply_overrides(BASE, ["model.name=transformer"])
    else:
        base = BASE
    cfg = apply_overrides(base, [f"{key}={format_value(value)}"])
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value


def test_groups_split_on_the_program_not_on_traced_values():
    space = parse_space(BASE, ["model.hidden=choice(8;16)", "optimizer.learning_rate=choice(1e-3;1e-2)",
                               "seed=range(2)", "model.dropout=choice(0;0.1;0.2)",
                               "optimizer.clip_norm=choice(0;1;2)"])
    points = strategy.trials(space, "grid", None, 0)
    trials = grouping.make_trials(BASE, space, points)
    rows = {"train": 1438, "test": 359}
    info = DatasetInfo("digits", "classification", (8, 8), "float32", (), "int32", 10, rows=rows)
    groups = grouping.make_groups(trials, {"digits": info})
    # hidden (2) x clipping on/off (2) x dropout on/off (2): learning rate, seed, the dropout
    # rate and the clip norm themselves are traced.
    assert len(groups) == 8
    for g in groups:
        members = [trials[t].cfg for t in g.trials]
        assert len({m.model.hidden for m in members}) == 1
        assert len({m.optimizer.clip_norm > 0 for m in members}) == 1
        assert len({m.model.dropout > 0 for m in members}) == 1
    assert sorted(len(g.trials) for g in groups) == [4, 4, 8, 8, 8, 8, 16, 16]
    assert all(g.total_steps == 2000 and g.steps_per_call == 100 for g in groups)


def test_carved_validation_rows_depend_on_the_validation_seed_not_the_trial_seed():
    cfg = apply_overrides(BASE, ["data.validation_fraction=0.2"])
    assert grouping.group_key(apply_overrides(cfg, ["seed=1"])) == grouping.group_key(
        apply_overrides(cfg, ["seed=2", "data_seed=5"]))
    assert grouping.group_key(cfg) != grouping.group_key(apply_overrides(cfg, ["data.validation_seed=1"]))


def test_chunks_are_even_and_bounded():
    assert grouping.chunk(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert grouping.chunk(list(range(6)), 4) == [[0, 1, 2], [3, 4, 5]]
    assert grouping.chunk(list(range(3)), 100) == [[0, 1, 2]]
    assert grouping.population_size(1000, None, 10_000) == 10
    assert grouping.population_size(1000, 4, 10_000) == 4
    assert grouping.parse_bytes("2G") == 2 * 1024**3 and grouping.parse_bytes("512MiB") == 512 * 1024**2


def test_default_digits_space_has_16_trials_over_learning_rate_and_seed():
    module = load_module("digits_mlp")
    base = module.config()
    space, declared = resolve_space(module, base, [])
    cells = strategy.trials(space, declared.get("strategy", "grid"), None, 0)
    assert len(cells) >= 16
    assert {"optimizer.learning_rate", "seed"} <= set(cells[0])
    assert len({c["optimizer.learning_rate"] for c in cells}) >= 4 and len({c["seed"] for c in cells}) >= 4
    # A command-line space replaces the experiment's; fixed values still apply beside it.
    space, _ = resolve_space(module, base, ["model.dropout=choice(0;0.2)", "steps=10"])
    assert [d.key for d in space.dimensions] == ["model.dropout"] and space.fixed == ("steps=10",)
    space, _ = resolve_space(module, base, ["seed=1"])
    assert [d.key for d in space.dimensions] == ["optimizer.learning_rate"]  # pinned: no longer swept
