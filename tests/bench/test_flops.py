"""FLOPs from XLA's cost analysis of a compiled step against the analytic counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from pipeline.bench.flops import dense_train_flops, transformer_matmul_params, transformer_train_flops
from pipeline.bench.jax_bare import make_step
from pipeline.bench.measure import xla_flops
from pipeline.bench.points import Point
from pipeline.models import TransformerConfig


def compiled_step_flops(workload) -> float:
    step, params, opt_state, rest = make_step(workload)
    xs, ys = workload.host_batches(1)
    return xla_flops(jax.jit(step).lower(params, opt_state, rest, xs[0], ys[0]).compile())


def test_dense_layer_forward_is_exact():
    b, i, o = 64, 300, 50
    f = jax.jit(lambda x, w, bias: x @ w + bias)
    flops = xla_flops(f.lower(jnp.ones((b, i)), jnp.ones((i, o)), jnp.ones((o,))).compile())
    assert flops == pytest.approx(2 * b * i * o + b * o, rel=1e-3)


@pytest.mark.parametrize("hidden", [(), (128,)])
def test_dense_train_step_matches_analytic(workload_for, hidden):
    # Tolerance 5%: XLA also counts biases, the softmax cross-entropy and the Adam update.
    text = ",".join(map(str, hidden))
    point = Point("t", "mlp", "images:16x16x1", 256, overrides=(f"model.hidden={text}",))
    w = workload_for(point)
    analytic = dense_train_flops((256, *hidden, 10), 256)
    assert compiled_step_flops(w) == pytest.approx(analytic, rel=0.05)


def test_dense_analytic_closed_form():
    # The first layer needs no gradient for its input (the data): 2 forward + 2 for the weights.
    assert dense_train_flops((5, 7, 3), 2) == 2 * (4 * 5 * 7 + 6 * 7 * 3)


TRANSFORMER = Point("t", "transformer", "tokens:512x64", 4, overrides=(
    "model.d_model=128", "model.n_layers=2", "model.n_heads=4", "model.context=64", "model.activation=gelu"))


def test_transformer_step_matches_analytic(workload_for):
    w = workload_for(TRANSFORMER)
    flops = compiled_step_flops(w)
    cfg = w.cfg.model
    # XLA computes the masked half of the attention scores too: against the non-causal count
    # the match is within 5%; MaxText's causal count (what MFU uses) is lower, within 10%.
    assert flops == pytest.approx(transformer_train_flops(cfg, 512, 4, 64, causal=False), rel=0.05)
    assert flops == pytest.approx(transformer_train_flops(cfg, 512, 4, 64), rel=0.10)
    assert flops > transformer_train_flops(cfg, 512, 4, 64)


def test_transformer_matmul_params_are_the_model_matrices(workload_for):
    w = workload_for(TRANSFORMER)
    matrices = sum(math.prod(s) for s in w.param_shapes.values() if len(s) == 2)  # tied: embedding once
    assert transformer_matmul_params(w.cfg.model, 512) == matrices


def test_transformer_analytic_closed_form():
    cfg = TransformerConfig(d_model=64, n_layers=1, n_heads=4, d_ff=256, context=8)
    params = 3 * 64 * 64 + 64 * 64 + 2 * 64 * 256 + 100 * 64
    assert transformer_matmul_params(cfg, 100) == params == 55552
    assert transformer_train_flops(cfg, 100, 2, 8) == 6 * params * 16 + 6 * 1 * 2 * 8**2 * 64
