"""Optax semantics of pipeline.optim: schedules, traced hyperparameters, masked weight decay."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pipeline.config import OptimizerConfig
from pipeline.models import MLPConfig, build_model
from pipeline.optim import decay_mask, hyperparams, make_optimizer

LR, WD, TOTAL, STEPS = 0.1, 0.05, 10, 13  # STEPS > TOTAL: the schedule's tail counts too


@pytest.fixture(scope="module")
def params():
    """Real MLP parameters: kernels (2-D) and biases (1-D) in an nnx.State."""
    _, params, _ = nnx.split(build_model(MLPConfig(hidden=(4,)), (3,), 2, seed=0), nnx.Param, ...)
    return params


def gradients(params, seed: int = 1):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: rng.normal(size=(STEPS, *p.shape)).astype(np.float32), params)


def run_updates(tx: optax.GradientTransformation, params, grads_seq):
    """The updates of STEPS steps (one compile), parameters moving as they would in training."""

    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), u

    return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), grads_seq)[1])(params)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def optax_reference(name: str, schedule: str, warmup: int, wd: float) -> optax.GradientTransformation:
    """Optax's own optimizer with a scheduled learning rate, what the config means."""
    lr = {
        "constant": optax.linear_schedule(0.0, LR, warmup) if warmup else LR,
        "cosine": optax.cosine_decay_schedule(LR, TOTAL),
        "warmup_cosine": optax.warmup_cosine_decay_schedule(0.0, LR, warmup, TOTAL),
    }[schedule]
    if name == "adamw":
        return optax.adamw(lr, b1=0.8, b2=0.99, weight_decay=wd, mask=decay_mask)
    inner = {"sgd": optax.sgd(lr), "momentum": optax.sgd(lr, momentum=0.7),
             "adam": optax.adam(lr, b1=0.8, b2=0.99)}[name]
    return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), inner)


@pytest.mark.parametrize("name, schedule, warmup, wd", [
    ("adamw", "warmup_cosine", 3, WD),
    ("adamw", "warmup_cosine", 0, WD),
    ("adam", "cosine", 0, WD),
    ("sgd", "cosine", 0, 0.0),
    ("momentum", "constant", 4, WD),
    ("adam", "constant", 0, 0.0),
])
def test_schedule_multiplier_equals_optax_scheduled_learning_rate(params, name, schedule, warmup, wd):
    cfg = OptimizerConfig(name=name, learning_rate=LR, schedule=schedule, warmup_steps=warmup,
                          weight_decay=wd, momentum=0.7, b1=0.8, b2=0.99)
    grads = gradients(params)
    assert_trees_close(run_updates(make_optimizer(cfg, TOTAL), params, grads),
                       run_updates(optax_reference(name, schedule, warmup, wd), params, grads))


def test_clipping_scales_by_the_global_norm(params):
    grads = gradients(params)
    first = jax.tree.map(lambda g: g[:1], grads)
    norm = float(optax.tree.norm(jax.tree.map(lambda g: g[0], grads)))
    clip = norm / 4
    cfg = OptimizerConfig(name="sgd", learning_rate=LR, clip_norm=clip)
    updates = run_updates(make_optimizer(cfg, TOTAL), params, first)
    assert_trees_close(updates, jax.tree.map(lambda g: -LR * g * clip / norm, first))
    loose = dataclasses.replace(cfg, clip_norm=norm * 2)  # a norm under the limit passes unchanged
    assert_trees_close(run_updates(make_optimizer(loose, TOTAL), params, first), jax.tree.map(lambda g: -LR * g, first))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases(params, name):
    zero = jax.tree.map(lambda p: jnp.zeros((1, *p.shape)), params)  # only the decay moves anything
    cfg = OptimizerConfig(name=name, learning_rate=LR, weight_decay=WD)
    updates = run_updates(make_optimizer(cfg, TOTAL), params, zero)
    named = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    for (path, p), u in zip(named, jax.tree.leaves(nnx.to_pure_dict(updates)), strict=True):
        kind = path[-1].key
        expected = -LR * WD * np.asarray(p) if kind == "kernel" else np.zeros(p.shape)
        np.testing.assert_allclose(np.asarray(u)[0], expected, rtol=1e-6, atol=1e-9, err_msg=kind)
    assert {path[-1].key for path, _ in named} == {"kernel", "bias"}


def test_changing_hyperparameters_does_not_recompile(params):
    traces = []

    @jax.jit
    def update(grads, state, p):
        traces.append(1)  # runs only while tracing
        return make_optimizer(OptimizerConfig(name="sgd", learning_rate=LR, weight_decay=WD), TOTAL).update(
            grads, state, p)

    tx = make_optimizer(OptimizerConfig(name="sgd", learning_rate=LR, weight_decay=WD), TOTAL)
    state = tx.init(params)
    g = jax.tree.map(lambda x: x[0], gradients(params))
    base, _ = update(g, state, params)
    hp = hyperparams(state)
    faster = state._replace(hyperparams={**hp, "learning_rate": hp["learning_rate"] * 3})
    no_decay = state._replace(hyperparams={**hp, "weight_decay": hp["weight_decay"] * 0})
    tripled, _ = update(g, faster, params)
    plain, _ = update(g, no_decay, params)
    assert len(traces) == 1 and update._cache_size() == 1
    assert_trees_close(tripled, jax.tree.map(lambda u: 3 * u, base))
    assert_trees_close(plain, jax.tree.map(lambda x: -LR * x, g))


def test_a_population_of_learning_rates_vmaps_through_one_update(params):
    tx = make_optimizer(OptimizerConfig(name="adam", learning_rate=LR), TOTAL)
    g = jax.tree.map(lambda x: x[0], gradients(params))
    rates = jnp.asarray([1e-3, 1e-2, 0.3], jnp.float32)

    def member(lr):
        state = tx.init(params)
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        return tx.update(g, state, params)[0]

    together = jax.jit(jax.vmap(member))(rates)
    for i, lr in enumerate(rates):
        solo = jax.jit(member)(lr)
        assert_trees_close(jax.tree.map(lambda u, i=i: u[i], together), solo, rtol=1e-6)


def test_gradient_accumulation_averages_k_batches(params):
    grads = jax.tree.map(lambda g: g[:4], gradients(params))
    tx = make_optimizer(OptimizerConfig(name="sgd", learning_rate=LR), TOTAL, grad_accum=2)
    updates = run_updates(tx, params, grads)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(u[0]), 0.0)
        np.testing.assert_allclose(np.asarray(u[1]), -LR * (g[0] + g[1]) / 2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(u[3]), -LR * (g[2] + g[3]) / 2, rtol=1e-5, atol=1e-7)
    assert float(hyperparams(tx.init(params))["learning_rate"]) == pytest.approx(LR)



def _adamw_clipped(**hp):
    return optax.chain(optax.clip_by_global_norm(hp["clip_norm"]),
                       optax.add_decayed_weights(hp["weight_decay"], mask=decay_mask),
                       optax.adam(hp["learning_rate"], b1=hp["b1"]))


def test_the_compiled_initial_state_is_the_one_made_operation_by_operation(params):
    """The optimizer state a sweep starts each trial from (one compiled call per optimizer shape, shared by
    every optimizer of that shape whatever its values) equals, leaf for leaf and in dtype, the state made
    an operation at a time."""
    from pipeline.optim.traced import traced_hyperparams

    shape = ("test", "adam, coupled decay, clipped")
    for values in (dict(learning_rate=0.3, b1=0.7, weight_decay=WD, clip_norm=2.5),
                   dict(learning_rate=1e-4, b1=0.95, weight_decay=0.0, clip_norm=1.0)):  # the first's compiled init
        build = lambda **hp: _adamw_clipped(**hp)  # noqa: E731 - a new closure each time, as make_optimizer's
        compiled = traced_hyperparams(build, shape, **values).init(params)
        by_hand = traced_hyperparams(build, None, **values).init(params)
        assert jax.tree.structure(compiled) == jax.tree.structure(by_hand)
        for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(by_hand), strict=True):
            assert (a.dtype, a.shape, a.weak_type) == (b.dtype, b.shape, b.weak_type)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert {k: float(v) for k, v in hyperparams(compiled).items()} == {k: float(np.float32(v))
                                                                          for k, v in values.items()}


def test_the_optimizers_of_a_sweep_share_one_compiled_initial_state():
    from pipeline.optim import traced

    _, params, _ = nnx.split(build_model(MLPConfig(hidden=(5, 3)), (7,), 2, seed=0), nnx.Param, ...)  # new shapes
    before = {k: f._cache_size() for k, f in traced._INITS.items()}
    made = [make_optimizer(OptimizerConfig(name="adamw", learning_rate=lr, b1=b1), TOTAL).init(params)
            for lr, b1 in ((1e-3, 0.9), (0.2, 0.6), (3e-5, 0.99))]
    compiles = sum(f._cache_size() - before.get(k, 0) for k, f in traced._INITS.items())
    assert compiles == 1  # three optimizers of one shape: one compile
    assert [float(hyperparams(s)["learning_rate"]) for s in made] == [float(np.float32(v)) for v in (1e-3, 0.2, 3e-5)]
