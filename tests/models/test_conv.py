"""The canonical convolution: lax's values and gradients, and canonical convolutions inside the scan."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from pipeline.config import Config, apply_overrides
from pipeline.data import Store, ensure_dataset
from pipeline.models.conv import canonical_conv, conv_general_dilated
from pipeline.train.prepare import prepare
from pipeline.train.step import train_many


def lax_same(x, w):
    spatial = x.ndim - 2
    s = "HWD"[:spatial]
    return lax.conv_general_dilated(x, w, (1,) * spatial, "SAME", dimension_numbers=(f"N{s}C", f"{s}IO", f"N{s}C"))


@pytest.mark.parametrize("spatial_shape, kernel", [((9, 7), (3, 3)), ((8, 8), (4, 4)), ((6, 9), (2, 3)),
                                                   ((17,), (5,)), ((10,), (4,))])
def test_values_and_gradients_equal_lax(spatial_shape, kernel):
    key = jax.random.key(0)
    x = jax.random.normal(key, (3, *spatial_shape, 2))
    w = jax.random.normal(jax.random.fold_in(key, 1), (*kernel, 2, 5))
    np.testing.assert_allclose(canonical_conv(x, w), lax_same(x, w), rtol=1e-5, atol=1e-5)

    def grads(conv):  # a non-linear loss, so the incoming gradient varies by position
        return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)

    for ours, theirs in zip(grads(canonical_conv), grads(lax_same), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_other_convolutions_are_lax_unchanged():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    strided = jax.make_jaxpr(lambda x, w: conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=dn))(x, w)
    assert "custom_vjp" not in str(strided)
    plain = jax.make_jaxpr(lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))(x, w)
    assert "custom_vjp" in str(plain)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


@pytest.mark.heavy
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the canonical form is what XLA:CPU needs")
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_every_convolution_of_the_scanned_cnn_step_is_canonical(store, norm):
    """What the module is for: no convolution left in a form XLA:CPU runs without Eigen."""
    cfg = apply_overrides(Config(data="digits", steps=20, batch_size=8),
                          ["model.name=cnn", "model.channels=4,8", "model.hidden=8", f"model.norm={norm}"])
    p = prepare(cfg, store)
    idx = np.zeros((3, 8), np.int32)
    text = jax.jit(functools.partial(train_many, p.spec)).lower(p.state, p.train.x, p.train.y, idx).compile().as_text()
    labels = re.findall(r"= \S+ convolution\([^\n]*dim_labels=([^,\s]+)", text)
    assert len(labels) == 5  # two layers, each forward and kernel gradient; the input gradient of the second
    assert set(labels) == {"b01f_01io->b01f"}
