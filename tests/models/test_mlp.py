"""The MLP against a numpy forward pass; the linear special case; dropout's semantics."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pipeline.models import MLPConfig, build_model
from pipeline.models.layers import Dropout

NUMPY_ACTIVATIONS = {
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    # jax.nn.gelu defaults to the tanh approximation
    "gelu": lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
}


def numpy_params(model) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    layers = pure.get("layers", {})
    hidden = [(np.asarray(layers[i]["kernel"], np.float64), np.asarray(layers[i]["bias"], np.float64))
              for i in sorted(layers)]
    head = (np.asarray(pure["head"]["kernel"], np.float64), np.asarray(pure["head"]["bias"], np.float64))
    return hidden, head


def numpy_forward(model, x: np.ndarray, activation: str) -> np.ndarray:
    hidden, (w, b) = numpy_params(model)
    h = x.reshape(x.shape[0], -1).astype(np.float64)
    for wi, bi in hidden:
        h = NUMPY_ACTIVATIONS[activation](h @ wi + bi)
    return h @ w + b


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def apply(model, x):
    """The model's output in its current mode, compiled once per model structure and mode."""
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, x)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "gelu"])
def test_forward_matches_numpy_and_flattens_images(activation):
    model = build_model(MLPConfig(hidden=(5, 4), activation=activation), (2, 3), 3, seed=0)
    x = np.random.default_rng(1).normal(size=(7, 2, 3)).astype(np.float32)
    out = apply(model, x)
    assert out.shape == (7, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), numpy_forward(model, x, activation), rtol=2e-5, atol=2e-6)


def test_no_hidden_layer_is_a_linear_model():
    model = build_model(MLPConfig(hidden=()), (3,), 2, seed=0)
    hidden, (w, b) = numpy_params(model)
    assert hidden == [] and w.shape == (3, 2) and b.shape == (2,)
    x = np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(apply(model, x)), x @ w + b, rtol=1e-5, atol=1e-6)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(leaf.size for leaf in leaves) == 3 * 2 + 2


def test_initialisation_is_seeded_lecun_normal_with_zero_biases():
    cfg = MLPConfig(hidden=(64,))
    a, b, c = (numpy_params(build_model(cfg, (100,), 10, seed=s)) for s in (0, 0, 1))
    (wa, ba), = a[0]
    np.testing.assert_array_equal(wa, b[0][0][0])
    assert not np.array_equal(wa, c[0][0][0])
    assert np.all(ba == 0) and np.all(a[1][1] == 0)
    assert wa.std() == pytest.approx(1 / math.sqrt(100), rel=0.05)  # 6400 draws: std within 0.9%


def test_dropout_is_off_in_eval_mode_and_at_rate_zero():
    x = np.random.default_rng(3).normal(size=(7, 2, 3)).astype(np.float32)
    plain = build_model(MLPConfig(hidden=(5, 4), activation="relu"), (2, 3), 3, seed=0)
    model = build_model(MLPConfig(hidden=(5, 4), activation="relu", dropout=0.5), (2, 3), 3, seed=0)
    expected = numpy_forward(plain, x, "relu")  # dropout draws from its own stream: same parameters
    model.eval()
    np.testing.assert_allclose(np.asarray(apply(model, x)), expected, rtol=2e-5, atol=2e-6)
    model.train()
    first, second = np.asarray(model(x)), np.asarray(model(x))
    assert not np.allclose(first, expected) and not np.allclose(first, second)  # a fresh mask each call
    again = build_model(MLPConfig(hidden=(5, 4), activation="relu", dropout=0.5), (2, 3), 3, seed=0)
    np.testing.assert_array_equal(np.asarray(again(x)), first)  # same seed, same masks


def test_dropout_zeroes_a_fraction_and_scales_the_rest_with_a_traced_rate():
    x = jnp.asarray(np.random.default_rng(4).uniform(1, 2, size=(100, 100)), jnp.float32)
    apply_dropout = jax.jit(lambda graphdef, state, x: nnx.merge(graphdef, state)(x), static_argnums=0)
    graphdefs = set()
    for rate in (0.1, 0.5, 0.8):
        graphdef, state = nnx.split(Dropout(rate, rngs=nnx.Rngs(dropout=5)))
        graphdefs.add(graphdef)
        y = np.asarray(apply_dropout(graphdef, state, x))
        kept = y != 0
        np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
        assert kept.mean() == pytest.approx(1 - rate, abs=0.02)  # 10000 draws: 4 standard deviations
    assert len(graphdefs) == 1 and apply_dropout._cache_size() == 1  # the rate is state: one program


def test_inverted_dropout_keeps_the_expected_output():
    # With one hidden layer and a linear head, E[out] over masks equals the evaluation output.
    model = build_model(MLPConfig(hidden=(8,), activation="tanh", dropout=0.5), (3,), 2, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = np.random.default_rng(6).normal(size=(2, 3)).astype(np.float32)
    keys = jax.random.split(jax.random.key(7), 4000)

    def with_key(k):
        is_key = lambda a: jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)  # noqa: E731
        return nnx.merge(graphdef, params, jax.tree.map(lambda a: k if is_key(a) else a, rest))(x)

    outs = np.asarray(jax.jit(jax.vmap(with_key))(keys), np.float64)
    stderr = outs.std(0) / math.sqrt(len(keys))
    model.eval()
    np.testing.assert_array_less(np.abs(outs.mean(0) - np.asarray(apply(model, x))), 5 * stderr)
