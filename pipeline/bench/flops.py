"""Analytic FLOP counts of a training step (forward + backward = 3x forward).

Transformers follow the convention MaxText documents: 6 x (parameters that multiply
activations) x tokens, plus causal attention 6 x layers x batch x length^2 x d_model (the
score and value products, halved for the causal mask, times 3 for training). The input
embedding is a lookup and not counted; the output projection (the tied embedding or
the unembedding) is. Dense networks: 2 x weights x examples forward and twice that
backward, except the first layer, which needs no gradient for its input (the data): 4x.
Biases, norms, activations and the optimizer update are not counted.
"""

from __future__ import annotations

import math

from pipeline.config import ModelConfig


def dense_train_flops(widths: tuple[int, ...], batch: int) -> float:
    """A stack of dense layers with these widths (input first, output last), fed data."""
    weights = [a * b for a, b in zip(widths[:-1], widths[1:])]
    return batch * (4.0 * weights[0] + 6.0 * sum(weights[1:]))


def mlp_train_flops(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int, batch: int) -> float:
    return dense_train_flops((math.prod(feature_shape), *cfg.hidden, out_features), batch)


def transformer_matmul_params(cfg: ModelConfig, vocab: int) -> int:
    d, f = cfg.d_model, cfg.d_ff or 4 * cfg.d_model
    per_layer = 3 * d * d + d * d + 2 * d * f  # qkv, attention output, MLP up and down
    return cfg.n_layers * per_layer + vocab * d  # + the output projection


def transformer_train_flops(cfg: ModelConfig, vocab: int, batch: int, length: int,
                            causal: bool = True) -> float:
    tokens = batch * length
    weights = 6.0 * transformer_matmul_params(cfg, vocab) * tokens
    attention = 12.0 * cfg.n_layers * batch * length**2 * cfg.d_model
    return weights + (attention / 2 if causal else attention)


def analytic_train_flops(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int,
                         batch: int) -> float | None:
    """The analytic count for the families that have one (None for the CNN)."""
    if cfg.name == "mlp":
        return mlp_train_flops(cfg, feature_shape, out_features, batch)
    if cfg.name == "transformer":
        return transformer_train_flops(cfg, out_features, batch, int(feature_shape[0]))
    return None
