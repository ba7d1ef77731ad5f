"""Convolutional network: 1-D for signals, 2-D for images, chosen from the feature shape.

Features of shape (L,) are signals with one channel, (H, W) images with one channel and
(H, W, C) images with C channels. Each entry of ``channels`` is one block: a convolution
(``kernel_size``, ``stride``, 'SAME' padding), an optional normalisation, the activation and
a 2x pooling (axes of length 1 are not pooled). The head flattens, runs the ``hidden`` dense
layers with dropout, and ends in a linear layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
from flax import nnx

from pipeline.config import ConfigError, ModelConfig, traced
from pipeline.models.conv import conv_general_dilated
from pipeline.models.layers import ACTIVATIONS, Dropout
from pipeline.models.mlp import check_common
from pipeline.registry import register_model

EXPECTED = "(L,) signals, (H, W) or (H, W, C) images"
BATCH_NORM_MOMENTUM = 0.9  # short runs: running statistics should catch up within ~tens of steps


@dataclass(frozen=True)
class CNNConfig(ModelConfig):
    name: str = "cnn"
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    stride: int = 1
    pool: str = "max"  # max | avg | none
    norm: str = "none"  # none | layer | batch
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"  # sigmoid | tanh | relu | gelu
    dropout: float = traced(0.0, switch=True)

    def validate(self) -> None:
        check_common(self)
        for key, allowed in (("pool", ("max", "avg", "none")), ("norm", ("none", "layer", "batch"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"bad value for 'model.{key}': {getattr(self, key)!r}; choose one of "
                                  f"{', '.join(allowed)}")
        for key in ("hidden", "channels"):
            if any(width < 1 for width in getattr(self, key)):
                raise ConfigError(f"bad value for 'model.{key}': {','.join(map(str, getattr(self, key)))}: "
                                  "every width must be at least 1")
        if not self.channels:
            raise ConfigError("bad value for 'model.channels': model.name=cnn needs at least one channel count")
        if self.kernel_size < 1 or self.stride < 1:
            raise ConfigError("bad value for 'model.kernel_size'/'model.stride': both must be at least 1")


def check_input(cfg, feature_shape: tuple[int, ...], dataset: str | None = None) -> None:
    """Raise ConfigError naming the shape (and the dataset when known) unless the CNN can take it."""
    if len(feature_shape) in (1, 2, 3) and min(feature_shape) >= 1:
        return
    shape = tuple(feature_shape)
    where = f"dataset '{dataset}' has features of shape {shape}" if dataset else f"features of shape {shape}"
    raise ConfigError(f"{where}; model.name=cnn expects {EXPECTED}")


def _layout(feature_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Spatial shape and input channels."""
    if len(feature_shape) == 3:
        return tuple(feature_shape[:2]), int(feature_shape[2])
    return tuple(feature_shape), 1


class CNN(nnx.Module):
    def __init__(self, feature_shape: tuple[int, ...], cfg, out_features: int, *, rngs: nnx.Rngs):
        spatial, in_ch = _layout(feature_shape)
        self.rank = len(feature_shape)
        self.activation = cfg.activation
        self.pool = cfg.pool
        self.norm = cfg.norm
        dims = len(spatial)
        convs, norms, windows = [], [], []
        for out_ch in cfg.channels:
            convs.append(nnx.Conv(in_ch, out_ch, (cfg.kernel_size,) * dims, (cfg.stride,) * dims,
                                  padding="SAME", use_bias=cfg.norm != "batch", rngs=rngs,
                                  conv_general_dilated=conv_general_dilated))
            if cfg.norm == "batch":
                norms.append(nnx.BatchNorm(out_ch, momentum=BATCH_NORM_MOMENTUM, rngs=rngs))
            elif cfg.norm == "layer":
                norms.append(nnx.LayerNorm(out_ch, rngs=rngs))
            spatial = tuple(-(-n // cfg.stride) for n in spatial)  # 'SAME' padding
            window = tuple(2 if n >= 2 and cfg.pool != "none" else 1 for n in spatial)
            windows.append(window)
            spatial = tuple(n // w for n, w in zip(spatial, window))
            in_ch = out_ch
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.windows = tuple(windows)
        widths = (math.prod(spatial) * in_ch, *cfg.hidden)
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.drops = nnx.List([Dropout(cfg.dropout, rngs=rngs) for _ in cfg.hidden])
        self.head = nnx.Linear(widths[-1], out_features, rngs=rngs)

    def __call__(self, x_BxF: jax.Array) -> jax.Array:
        h = x_BxF if self.rank == 3 else x_BxF[..., None]  # channels last
        act = ACTIVATIONS[self.activation]
        for i, (conv, window) in enumerate(zip(self.convs, self.windows)):
            h = conv(h)
            if self.norm == "batch":
                # Train mode updates the running statistics, eval mode uses them (model.train()/eval()).
                # Statistics are float32; keep the compute dtype (bf16 stays bf16).
                h = self.norms[i](h).astype(h.dtype)
            elif self.norm == "layer":
                h = self.norms[i](h)
            h = act(h)
            if any(w > 1 for w in window):
                pool = nnx.max_pool if self.pool == "max" else nnx.avg_pool
                h = pool(h, window, strides=window, padding="VALID")
        h = h.reshape(h.shape[0], -1)
        for layer, drop in zip(self.dense, self.drops):
            h = drop(act(layer(h)))
        return self.head(h)


def build(cfg: CNNConfig, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> CNN:
    check_input(cfg, feature_shape)
    return CNN(tuple(feature_shape), cfg, out_features, rngs=rngs)


def check_dataset(cfg: CNNConfig, info) -> None:
    check_input(cfg, info.feature_shape, dataset=info.name)


register_model("cnn", CNNConfig, build, check=check_dataset)
