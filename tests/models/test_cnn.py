"""The CNN family: 1-D and 2-D layouts, batch-norm statistics through the train step, learning."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pipeline.config import Config, ConfigError, OptimizerConfig
from pipeline.data.dataset import DatasetInfo
from pipeline.models import CNNConfig, build_model
from pipeline.models.cnn import check_dataset
from pipeline.train.state import create_state
from pipeline.train.step import train_step

TINY = CNNConfig(channels=(4, 6), kernel_size=3, hidden=(8,))


def info(feature_shape: tuple[int, ...], classes: int = 3, name: str = "tiny") -> DatasetInfo:
    return DatasetInfo(name=name, task="classification", feature_shape=feature_shape, feature_dtype="float32",
                       label_shape=(), label_dtype="int32", num_classes=classes)


@pytest.mark.parametrize(
    "shape, conv_rank",
    [((40,), 1), ((8, 8), 2), ((8, 8, 3), 2), ((7, 5), 2)],
)
def test_layout_follows_the_feature_shape(shape, conv_rank):
    model = build_model(TINY, shape, 5, seed=0)
    assert model.convs[0].kernel.shape == (3,) * conv_rank + (shape[2] if len(shape) == 3 else 1, 4)
    out = model(jnp.ones((2, *shape)))
    assert out.shape == (2, 5)


def test_flattened_width_matches_strides_and_pooling():
    # 40 -> conv stride 2 ('SAME') 20 -> pool 10 -> conv stride 2 10... 5 -> pool 2: 2 x 6 channels
    cfg = dataclasses.replace(TINY, stride=2)
    assert build_model(cfg, (40,), 3, seed=0).dense[0].kernel.shape == (2 * 6, 8)
    # 8x8 -> pool 4x4 -> pool 2x2; no pooling keeps 8x8
    assert build_model(TINY, (8, 8), 3, seed=0).dense[0].kernel.shape == (2 * 2 * 6, 8)
    no_pool = dataclasses.replace(TINY, pool="none")
    assert build_model(no_pool, (8, 8), 3, seed=0).dense[0].kernel.shape == (8 * 8 * 6, 8)


def test_avg_pool_is_the_mean_of_each_window():
    cfg = dataclasses.replace(TINY, channels=(1,), pool="avg", activation="relu", hidden=())
    model = build_model(cfg, (4,), 1, seed=0)
    model.convs[0].kernel[...] = jnp.zeros((3, 1, 1)).at[1, 0, 0].set(1.0)  # identity convolution
    model.convs[0].bias[...] = jnp.zeros((1,))
    model.head.kernel[...] = jnp.ones((2, 1))
    model.head.bias[...] = jnp.zeros((1,))
    x = jnp.array([[1.0, 3.0, 5.0, 9.0]])
    np.testing.assert_allclose(model(x), [[(1 + 3) / 2 + (5 + 9) / 2]], rtol=1e-6)


@pytest.mark.parametrize("shape", [(), (2, 3, 4, 5), (0, 4)])
def test_shapes_it_cannot_take_fail_at_build(shape):
    with pytest.raises(ConfigError, match=r"model.name=cnn expects \(L,\) signals, \(H, W\) or \(H, W, C\)"):
        build_model(TINY, shape, 3, seed=0)


def test_check_dataset_names_the_dataset_and_its_shape():
    with pytest.raises(ConfigError) as err:
        check_dataset(TINY, info((2, 3, 4, 5), name="volumes"))
    assert str(err.value) == ("dataset 'volumes' has features of shape (2, 3, 4, 5); "
                              "model.name=cnn expects (L,) signals, (H, W) or (H, W, C) images")
    check_dataset(TINY, info((8, 8)))  # fits: no error


def _state(model_cfg: CNNConfig, shape, classes=3, **cfg_kwargs):
    cfg = Config(model=model_cfg, batch_size=8, optimizer=OptimizerConfig(learning_rate=1e-2), **cfg_kwargs)
    return create_state(cfg, info(shape, classes), total_steps=100)


def test_batch_norm_running_mean_flows_back_through_the_train_step():
    spec, state = _state(dataclasses.replace(TINY, norm="batch"), (8, 8))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8)) + 2.0
    y = jnp.arange(8) % 3
    model = nnx.merge(spec.graphdef, state.params, state.rest)
    batch_mean = model.convs[0](x[..., None]).mean(axis=(0, 1, 2))  # over batch and space
    new_state, _ = jax.jit(functools.partial(train_step, spec))(state, x, y)
    after = nnx.merge(spec.graphdef, new_state.params, new_state.rest)
    # running = momentum * 0 + (1 - momentum) * batch mean, with momentum 0.9
    np.testing.assert_allclose(after.norms[0].mean[...], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)


def test_batch_norm_eval_mode_uses_running_statistics():
    model = build_model(dataclasses.replace(TINY, norm="batch"), (8, 8), 3, seed=0)
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 8, 8))
    model.eval()
    alone_eval = model(x[:1])
    batch_eval = model(x)[:1]
    np.testing.assert_allclose(alone_eval, batch_eval, rtol=1e-5, atol=1e-6)  # per-example in eval
    model.train()
    alone_train = model(x[:1].repeat(2, 0))[:1]
    batch_train = model(x)[:1]
    assert not np.allclose(alone_train, batch_train, atol=1e-3)  # batch statistics in training


@pytest.mark.parametrize("shape, norm", [((40,), "batch"), ((8, 8), "layer")])
def test_loss_decreases_on_a_tiny_run(shape, norm):
    spec, state = _state(dataclasses.replace(TINY, norm=norm), shape, classes=2)
    x = jax.random.normal(jax.random.PRNGKey(3), (8, *shape))
    y = (x.reshape(8, -1).mean(-1) > 0).astype(jnp.int32)
    step = jax.jit(functools.partial(train_step, spec))
    losses = []
    for _ in range(25):
        state, metrics = step(state, x, y)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.3 * losses[0]


def test_bf16_with_batch_norm_stays_close_to_fp32():
    model_cfg = dataclasses.replace(TINY, norm="batch")
    x = jax.random.normal(jax.random.PRNGKey(4), (8, 8, 8)) + 1.0  # non-zero statistics
    y = jnp.arange(8) % 3
    runs = {}
    for precision in ("fp32", "bf16"):
        spec, state = _state(model_cfg, (8, 8), precision=precision)
        step = jax.jit(functools.partial(train_step, spec))
        losses = []
        for _ in range(5):
            state, metrics = step(state, x, y)
            losses.append(float(metrics["loss"]))
        runs[precision] = losses, state
    # running statistics stay float32 and agree to bf16 precision (measured: within 0.005, largest 0.7)
    means = [nnx.merge(spec.graphdef, s.params, s.rest).norms[0].mean[...] for _, s in runs.values()]
    assert means[1].dtype == jnp.float32
    np.testing.assert_allclose(means[1], means[0], rtol=0.05, atol=0.01)
    # measured: losses within 0.5% over 5 updates
    np.testing.assert_allclose(runs["bf16"][0], runs["fp32"][0], rtol=0.03)
    assert runs["bf16"][0] != runs["fp32"][0]
