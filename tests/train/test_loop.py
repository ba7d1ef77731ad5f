"""The loop's compiled programs: K steps per call, compile counts, training features."""

from __future__ import annotations

import dataclasses
import functools
import logging
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.config import Config, OptimizerConfig, apply_overrides
from pipeline.data import Store, ensure_dataset
from pipeline.data.order import EpochOrder
from pipeline.models import MLPConfig
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs
from pipeline.train.run import train
from pipeline.train.state import create_state
from pipeline.train.step import train_many, train_step
from pipeline.train.steps_per_call import scan_unroll

TINY = Config(data="digits", steps=60, batch_size=16, eval_every=30, model=MLPConfig(hidden=(8,)),
              optimizer=OptimizerConfig(name="adam", learning_rate=1e-2))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


@pytest.fixture(scope="module")
def prep(store):
    return prepare(TINY, store)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_k_steps_per_call_equal_k_single_steps(prep):
    run = jax.jit(functools.partial(train_many, prep.spec))  # not donating: the fixture's state is shared
    order = EpochOrder(prep.train.rows, TINY.batch_size, TINY.resolved_data_seed)
    x, y = prep.train.x, prep.train.y
    state_k, metrics_k = run(prep.state, x, y, order.indices(0, 5))
    state_1, losses = prep.state, []
    for step in range(5):
        state_1, m = run(state_1, x, y, order.indices(step, 1))
        losses.append(float(m["loss"][0]))
    assert int(state_k.step) == int(state_1.step) == 5
    np.testing.assert_allclose(np.asarray(metrics_k["loss"]), losses, rtol=1e-5)
    for a, b in zip(leaves(state_k.params), leaves(state_1.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [6, 5])
def test_an_unrolled_call_equals_the_plain_one(prep, k):
    """Two steps per scan iteration (tiny steps in long runs) change the program, not the results;
    a K that two does not divide keeps one step per iteration (no remainder loop)."""
    idx = EpochOrder(prep.train.rows, TINY.batch_size, TINY.resolved_data_seed).indices(0, k)
    args = (prep.state, prep.train.x, prep.train.y, idx)
    plain = jax.jit(functools.partial(train_many, prep.spec))
    unrolled = jax.jit(functools.partial(train_many, dataclasses.replace(prep.spec, unroll=2)))
    assert (plain.lower(*args).as_text() != unrolled.lower(*args).as_text()) == (k % 2 == 0)
    (state_p, metrics_p), (state_u, metrics_u) = plain(*args), unrolled(*args)
    np.testing.assert_allclose(np.asarray(metrics_u["loss"]), np.asarray(metrics_p["loss"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics_u["accuracy"]), np.asarray(metrics_p["accuracy"]))
    for a, b in zip(leaves(state_u.params), leaves(state_p.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_call_over_the_state_leaves_equals_the_call_over_the_state(prep):
    """What a run's population calls (the state as a list of leaves, no Python flattening of nnx
    Variables at each call) is the same program as the one over the TrainState."""
    programs = solo_programs(prep.spec, 4, shardings=prep.shardings)
    idx = EpochOrder(prep.train.rows, TINY.batch_size, TINY.resolved_data_seed).indices(0, 4)
    copy = functools.partial(jax.tree.map, jnp.copy)  # both programs donate their state
    state, metrics = programs.run(copy(prep.state), prep.train.x, prep.train.y, idx)
    treedef = jax.tree.structure(prep.state)
    run_leaves = programs.run_leaves.jitted(treedef)
    leaves, metrics_l = run_leaves(jax.tree.leaves(copy(prep.state)), prep.train.x, prep.train.y, idx)
    assert jax.tree.structure(jax.tree.unflatten(treedef, leaves)) == jax.tree.structure(state)
    for a, b in zip(leaves, jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(metrics_l["loss"]), np.asarray(metrics["loss"]))
    assert programs.run_leaves.jitted(treedef) is run_leaves  # one program per structure


def test_only_tiny_steps_of_long_runs_are_unrolled(prep, store):
    assert scan_unroll(2_410, 32, 1_000_000) == 2  # the digits MLP of `pipeline bench cpu-small`
    assert scan_unroll(2_410, 32, 20_000) == 1  # a short run would not earn back the extra compile time
    assert scan_unroll(10**9, 32, 1_000_000) == 1  # a large step: the loop's own cost is noise
    assert prep.spec.unroll == 1
    assert prepare(dataclasses.replace(TINY, steps=200_000, eval_every=100_000), store).spec.unroll == 2


def test_one_compilation_per_run_and_none_after_step_one(store, tmp_path, caplog):
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        train(dataclasses.replace(TINY, steps=90, steps_per_call=10), "t", tmp_path / "run", store, show_progress=False)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert sum("train_many" in m for m in compiles) == 1, compiles
    assert sum("eval_sums" in m for m in compiles) == 1, compiles


def program_text(store, overrides: list[str]) -> str:
    p = prepare(apply_overrides(TINY, overrides), store)
    idx = np.zeros((10, TINY.batch_size), np.int32)
    return jax.jit(functools.partial(train_many, p.spec)).lower(p.state, p.train.x, p.train.y, idx).as_text()


def test_a_learning_rate_override_gives_the_same_program(store):
    """Traced hyperparameters: a changed learning rate (or weight decay, dropout rate) is the same HLO."""
    base = program_text(store, ["model.dropout=0.1", "optimizer.weight_decay=0.01", "label_smoothing=0.05"])
    changed = program_text(store, ["optimizer.learning_rate=0.3", "optimizer.weight_decay=0.1", "model.dropout=0.2",
                                   "label_smoothing=0.1", "seed=7"])
    assert base == changed
    # Dropout, weight decay and label smoothing on or off are switches of the program: off, their work is left out.
    assert program_text(store, ["model.dropout=0", "optimizer.weight_decay=0.01", "label_smoothing=0.05"]) != base
    assert program_text(store, ["model.dropout=0.1", "optimizer.weight_decay=0", "label_smoothing=0.05"]) != base
    assert program_text(store, ["model.dropout=0.1", "optimizer.weight_decay=0.01"]) != base


def test_dropout_switched_on_at_rate_zero_equals_dropout_switched_off(prep, store):
    """The switch only removes work: a mask drawn at a traced rate of 0 keeps every unit, unscaled."""
    idx = EpochOrder(prep.train.rows, TINY.batch_size, 0).indices(0, 8)
    switched_on = prepare(apply_overrides(TINY, ["model.dropout=0.1"]), store)
    rates = switched_on.state.rest["drops"][0]["rate"]
    assert float(rates[...]) == pytest.approx(0.1)  # the rate is model state, a traced value
    at_zero = switched_on.state.replace(rest=jax.tree.map(
        lambda a: jnp.zeros_like(a) if a is rates[...] else a, switched_on.state.rest))
    off = jax.jit(functools.partial(train_many, prep.spec))
    on = jax.jit(functools.partial(train_many, switched_on.spec))
    state_off, metrics_off = off(prep.state, prep.train.x, prep.train.y, idx)
    state_on, metrics_on = on(at_zero, prep.train.x, prep.train.y, idx)
    np.testing.assert_array_equal(np.asarray(metrics_off["loss"]), np.asarray(metrics_on["loss"]))
    for a, b in zip(leaves(state_off.params), leaves(state_on.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_warm_compilation_cache_compiles_nothing_new(tmp_path):
    """Two runs in one fresh process-level cache: the second (other learning rate) adds no entry."""
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from pipeline.cli import main
        cache = Path({str(tmp_path / 'cache')!r})
        args = ["train", "digits_mlp", "model.hidden=8", "steps=20", "eval_every=20", "--no-progress",
                "--compile-cache", str(cache), "--store", {str(tmp_path / 'data')!r}]
        assert main(args + ["--run-dir", {str(tmp_path / 'a')!r}]) == 0
        first = len(list(cache.iterdir()))
        assert main(args + ["optimizer.learning_rate=0.05", "--run-dir", {str(tmp_path / 'b')!r}]) == 0
        print("ENTRIES", first, len(list(cache.iterdir())))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    first, second = map(int, out.stdout.strip().splitlines()[-1].split()[1:])
    assert first >= 2 and second == first


def test_ema_is_the_moving_average_of_the_parameter_trajectory(store):
    cfg = dataclasses.replace(TINY, ema_decay=0.5)
    p = prepare(cfg, store)
    step = jax.jit(functools.partial(train_step, p.spec))
    state, expected = p.state, leaves(p.state.params)
    for i in range(3):
        idx = np.arange(16) + 16 * i
        state, _ = step(state, p.train.x[idx], p.train.y[idx])
        expected = [0.5 * e + 0.5 * q for e, q in zip(expected, leaves(state.params), strict=True)]
    for a, b in zip(leaves(state.ema), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_equals_one_step_on_the_joined_batch(store):
    info = ensure_dataset(store, "digits")
    sgd = OptimizerConfig(name="sgd", learning_rate=0.5)
    x, y = jnp.asarray(np.random.default_rng(0).random((32, 8, 8), np.float32)), jnp.arange(32) % 10
    spec_a, acc = create_state(dataclasses.replace(TINY, grad_accum=2, optimizer=sgd), info, 10)
    spec_b, big = create_state(dataclasses.replace(TINY, batch_size=32, optimizer=sgd), info, 10)
    step_a = jax.jit(functools.partial(train_step, spec_a))  # compiled: one program, not hundreds of eager ops
    acc, _ = step_a(acc, x[:16], y[:16])
    assert all(np.array_equal(a, b) for a, b in zip(leaves(acc.params), leaves(big.params), strict=True))
    acc, _ = step_a(acc, x[16:], y[16:])
    big, _ = jax.jit(functools.partial(train_step, spec_b))(big, x, y)
    for a, b in zip(leaves(acc.params), leaves(big.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_early_stopping_stops_after_patience_evaluations(store, tmp_path):
    # A learning rate too small to change accuracy: no evaluation improves on the first.
    cfg = apply_overrides(TINY, ["optimizer.learning_rate=1e-12", "steps=300", "eval_every=20", "patience=2"])
    summary = train(cfg, "t", tmp_path / "run", store, show_progress=False)
    assert summary["stopped_early"] is True
    assert summary["steps"] == 60  # evaluations at 20 (best), 40 and 60 (no improvement): stop
    assert summary["best"]["step"] == 20


def test_validation_split_is_carved_from_train_and_evaluated(store, tmp_path):
    cfg = apply_overrides(TINY, ["data.validation_fraction=0.25"])
    p = prepare(cfg, store)
    assert set(p.evals) == {"val", "test"}
    assert p.train.rows == 1438 - round(0.25 * 1438)
    summary = train(cfg, "t", tmp_path / "run", store, show_progress=False)
    assert summary["best"]["split"] == "val"
    assert 0.0 <= summary["metrics"]["val/accuracy"] <= 1.0


def test_bf16_compute_stays_close_to_float32(store):
    info = ensure_dataset(store, "digits")
    x, y = jnp.asarray(np.random.default_rng(0).random((16, 8, 8), np.float32)), jnp.arange(16) % 10
    spec32, s32 = create_state(TINY, info, 10)
    spec16, s16 = create_state(dataclasses.replace(TINY, precision="bf16"), info, 10)
    s32, m32 = jax.jit(functools.partial(train_step, spec32))(s32, x, y)  # compiled, as training runs it
    s16, m16 = jax.jit(functools.partial(train_step, spec16))(s16, x, y)
    assert m16["loss"].dtype == jnp.float32
    assert abs(float(m16["loss"]) - float(m32["loss"])) < 2e-2
    for leaf in jax.tree.leaves((s16.params, s16.opt_state)):
        assert leaf.dtype != jnp.bfloat16  # parameters and optimizer state stay float32


@pytest.mark.parametrize("budget", [2**31, 1000], ids=["device-resident", "streaming"])
def test_extending_a_finished_run_equals_running_it_whole(store, tmp_path, budget):
    """Resume continues the exact batch order and state on both data paths."""
    cfg = apply_overrides(TINY, [f"data.max_device_bytes={budget}", "steps=90", "eval_every=30"])
    whole = train(cfg, "t", tmp_path / "whole", store, show_progress=False)
    half = dataclasses.replace(cfg, steps=30)
    train(half, "t", tmp_path / "parts", store, show_progress=False)
    parts = train(cfg, "t", tmp_path / "parts", store, show_progress=False)
    assert parts["metrics"] == whole["metrics"]
    import pyarrow.parquet as pq

    a = pq.read_table(tmp_path / "whole" / "metrics.parquet").drop(["wall_s"])
    b = pq.read_table(tmp_path / "parts" / "metrics.parquet").drop(["wall_s"])
    assert a.equals(b)


def test_streaming_and_resident_paths_learn_alike(store, tmp_path):
    # The same training rows on both paths: a streamed split is never carved, so neither is this one.
    whole = ["steps=300", "eval_every=300", "data.validation_fraction=0"]
    resident = train(apply_overrides(TINY, whole), "t", tmp_path / "a", store, show_progress=False)
    streamed = train(apply_overrides(TINY, [*whole, "data.max_device_bytes=1000"]), "t",
                     tmp_path / "b", store, show_progress=False)
    # Different (equally random) batch orders: the same model quality, not the same numbers.
    assert abs(resident["metrics"]["test/accuracy"] - streamed["metrics"]["test/accuracy"]) < 0.05
    assert streamed["metrics"]["test/accuracy"] > 0.8
