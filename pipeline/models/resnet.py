"""Residual networks for small images (He et al. 2016): the CIFAR layout (depth 6n+2) and ResNet-18.

Features are images (H, W, C), channels last, or (H, W) with one channel. A 3x3 convolution stem
(``width`` channels, batch norm, ReLU), then stages of basic blocks, then global average pooling and
a linear layer.

* ``depth`` = 6n+2 (20, 32, 44, 56, 110): three stages of n blocks, ``width`` x 1, 2, 4 channels
  (16/32/64 by default), the second and third starting with stride 2. ResNet-20 has 0.27M
  parameters on 32x32x3 images with 10 classes, as in the paper.
* ``depth`` = 18: four stages of 2 blocks, ``width`` x 1, 2, 4, 8 channels (64/128/256/512 by
  default), the CIFAR variant of ResNet-18 (3x3 stem, no max pooling): 11.17M parameters there.

A basic block is conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU. Where a
block changes the shape, the shortcut either subsamples and pads the new channels with zeros
(``shortcut=pad``, the paper's option A for CIFAR, no parameters) or is a strided 1x1 convolution
and batch norm (``shortcut=conv``, option B, ResNet-18's). ``shortcut=auto`` is pad for 6n+2 and
conv for 18. Convolutions have no bias (the batch norm's shift replaces it).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from pipeline.config import ConfigError, ModelConfig
from pipeline.models.conv import conv_general_dilated
from pipeline.registry import register_model

EXPECTED = "(H, W) or (H, W, C) images"
BATCH_NORM_MOMENTUM = 0.9  # PyTorch's 0.1: the running statistics' usual pace for ResNets
SHORTCUTS = ("auto", "pad", "conv")
KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # He init, torchvision's choice


@dataclass(frozen=True)
class ResNetConfig(ModelConfig):
    name: str = "resnet"
    depth: int = 20  # 6n+2 (CIFAR layout: 3 stages of n blocks) or 18 (4 stages of 2 blocks)
    width: int = 0  # channels of the first stage, doubled at each next stage; 0: 16 for 6n+2, 64 for 18
    shortcut: str = "auto"  # auto | pad | conv: how a block that changes shape carries its input

    def validate(self) -> None:
        if not (self.depth == 18 or (self.depth >= 8 and (self.depth - 2) % 6 == 0)):
            raise ConfigError(f"bad value for 'model.depth': {self.depth}; model.name=resnet takes 6n+2 "
                              "(8, 14, 20, 32, 44, 56, 110, ...) or 18")
        if self.width < 0:
            raise ConfigError(f"bad value for 'model.width': {self.width} must not be negative (0: the layout's own)")
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(f"bad value for 'model.shortcut': {self.shortcut!r}; "
                              f"choose one of {', '.join(SHORTCUTS)}")


@dataclass(frozen=True)
class Layout:
    """The resolved shape of a ResNet: channels and blocks of each stage, and the shortcut kind."""

    stem: int
    stages: tuple[tuple[int, int], ...]  # (channels, blocks), the first at stride 1, the others at stride 2
    shortcut: str  # pad | conv


def layout(cfg: ResNetConfig) -> Layout:
    resnet18 = cfg.depth == 18
    width = cfg.width or (64 if resnet18 else 16)
    if resnet18:
        stages = tuple((width * 2**i, 2) for i in range(4))
    else:
        stages = tuple((width * 2**i, (cfg.depth - 2) // 6) for i in range(3))
    shortcut = cfg.shortcut if cfg.shortcut != "auto" else ("conv" if resnet18 else "pad")
    return Layout(width, stages, shortcut)


def check_input(feature_shape: tuple[int, ...], dataset: str | None = None) -> None:
    """Raise ConfigError naming the shape (and the dataset when known) unless it is an image."""
    if len(feature_shape) in (2, 3) and min(feature_shape) >= 1:
        return
    shape = tuple(feature_shape)
    where = f"dataset '{dataset}' has features of shape {shape}" if dataset else f"features of shape {shape}"
    raise ConfigError(f"{where}; model.name=resnet expects {EXPECTED}")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    # Padding k//2 on both sides (PyTorch's): a stride-2 output is centred on the even pixels, where
    # the pad shortcut samples; at stride 1 it is 'SAME', which conv.py runs on XLA:CPU's fast path.
    pad = kernel // 2
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=KERNEL_INIT, rngs=rngs, conv_general_dilated=conv_general_dilated)


def batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=BATCH_NORM_MOMENTUM, rngs=rngs)


def normed(norm: nnx.BatchNorm, h: jax.Array) -> jax.Array:
    """Batch norm in train mode updates its running statistics (float32); keep the compute dtype."""
    return norm(h).astype(h.dtype)


class BasicBlock(nnx.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str, *, rngs: nnx.Rngs):
        self.conv1, self.bn1 = conv(in_ch, out_ch, 3, stride, rngs), batch_norm(out_ch, rngs)
        self.conv2, self.bn2 = conv(out_ch, out_ch, 3, 1, rngs), batch_norm(out_ch, rngs)
        self.stride = stride
        self.pad_channels = out_ch - in_ch
        reshapes = stride != 1 or in_ch != out_ch
        self.project = conv(in_ch, out_ch, 1, stride, rngs) if reshapes and shortcut == "conv" else None
        self.project_bn = batch_norm(out_ch, rngs) if self.project is not None else None

    def shortcut(self, x: jax.Array) -> jax.Array:
        if self.project is not None:
            return normed(self.project_bn, self.project(x))
        x = x[:, :: self.stride, :: self.stride, :]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.pad_channels))) if self.pad_channels else x

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(normed(self.bn1, self.conv1(x)))
        h = normed(self.bn2, self.conv2(h))
        return jax.nn.relu(h + self.shortcut(x))


class ResNet(nnx.Module):
    def __init__(self, feature_shape: tuple[int, ...], cfg: ResNetConfig, out_features: int, *, rngs: nnx.Rngs):
        shape = layout(cfg)
        in_ch = int(feature_shape[2]) if len(feature_shape) == 3 else 1
        self.rank = len(feature_shape)
        self.stem, self.stem_bn = conv(in_ch, shape.stem, 3, 1, rngs), batch_norm(shape.stem, rngs)
        blocks, ch = [], shape.stem
        for stage, (out_ch, count) in enumerate(shape.stages):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(ch, out_ch, stride, shape.shortcut, rngs=rngs))
                ch = out_ch
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(ch, out_features, rngs=rngs)

    def __call__(self, x_BxF: jax.Array) -> jax.Array:
        h = x_BxF if self.rank == 3 else x_BxF[..., None]  # channels last
        h = jax.nn.relu(normed(self.stem_bn, self.stem(h)))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(axis=(1, 2)))  # global average pooling


def build(cfg: ResNetConfig, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> ResNet:
    check_input(feature_shape)
    return ResNet(tuple(feature_shape), cfg, out_features, rngs=rngs)


def check_dataset(cfg: ResNetConfig, info) -> None:
    check_input(info.feature_shape, dataset=info.name)


register_model("resnet", ResNetConfig, build, check=check_dataset)
