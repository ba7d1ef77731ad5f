"""Analytic FLOP counts of a training step (forward + backward = 3x forward).

A model family may register its own count (``pipeline.register_model(..., flops=...)``), which
is then the model's FLOPs for MFU; families without one are counted by XLA's cost analysis of
the plain compiled step instead.
Transformers follow the convention MaxText documents: 6 x (parameters that multiply
activations) x tokens, plus causal attention 6 x layers x batch x length^2 x d_model. Dense
networks: 2 x weights x examples forward and twice that backward, except the first layer,
which needs no gradient for its input (the data): 4x. Biases, norms, activations and the
optimizer update are not counted.
"""

from __future__ import annotations

from pipeline.config import ModelConfig
from pipeline.models.transformer import transformer_matmul_params, transformer_train_flops
from pipeline.registry import family

__all__ = ["analytic_train_flops", "dense_train_flops", "transformer_matmul_params", "transformer_train_flops"]


def dense_train_flops(widths: tuple[int, ...], batch: int) -> float:
    """A stack of dense layers with these widths (input first, output last), fed data: a cross-check
    of XLA's count (the MLP family registers none, so its MFU uses XLA's count of the plain step)."""
    weights = [a * b for a, b in zip(widths[:-1], widths[1:])]
    return batch * (4.0 * weights[0] + 6.0 * sum(weights[1:]))


def analytic_train_flops(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int,
                         batch: int) -> float | None:
    """The family's registered count, or None where it has none (then XLA's cost analysis counts)."""
    count = family(cfg.name).flops
    return None if count is None else count(cfg, feature_shape, out_features, batch)
