"""Vision Transformer (Dosovitskiy et al. 2021) for small images, on the language model's blocks.

Features are images (H, W, C), channels last, or (H, W) with one channel; H and W must be multiples
of ``patch``. Each ``patch`` x ``patch`` patch becomes one token by a linear map (a convolution of
kernel and stride ``patch``: the same as cutting the image into patches, flattening each in (row,
column, channel) order and multiplying by a (patch*patch*C, dim) matrix). A learned position table
is added, with a learned class token in front when ``pool=cls``. Then ``depth`` pre-norm blocks of
``pipeline.models.transformer.Block`` with full (not causal) attention, a final LayerNorm, and the
head on the class token (``pool=cls``) or on the mean over the patches (``pool=mean``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from pipeline.config import ConfigError, ModelConfig, traced
from pipeline.models.layers import Dropout
from pipeline.models.mlp import check_common
from pipeline.models.transformer import Block
from pipeline.registry import register_model

EXPECTED = "(H, W) or (H, W, C) images"
POOLS = ("cls", "mean")
EMBED_INIT = nnx.initializers.normal(stddev=0.02)  # position table and class token, as in ViT/BERT


@dataclass(frozen=True)
class ViTConfig(ModelConfig):
    name: str = "vit"
    patch: int = 4  # side of the square patches; H and W must be multiples of it
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_dim: int = 0  # 0 means 4 * dim
    pool: str = "cls"  # cls | mean
    activation: str = "gelu"  # sigmoid | tanh | relu | gelu
    dropout: float = traced(0.0, switch=True)

    def validate(self) -> None:
        check_common(self)
        for key in ("patch", "dim", "depth", "heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bad value for 'model.{key}': {getattr(self, key)} must be at least 1")
        if self.mlp_dim < 0:
            raise ConfigError(f"bad value for 'model.mlp_dim': {self.mlp_dim} must not be negative")
        if self.pool not in POOLS:
            raise ConfigError(f"bad value for 'model.pool': {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.dim % self.heads:
            raise ConfigError(f"bad value for 'model.heads': {self.heads} does not divide model.dim={self.dim}")


def check_input(cfg: ViTConfig, feature_shape: tuple[int, ...], dataset: str | None = None) -> None:
    """Raise ConfigError naming the shape (and the dataset when known) unless it is an image of whole patches."""
    shape = tuple(feature_shape)
    where = f"dataset '{dataset}' has features of shape {shape}" if dataset else f"features of shape {shape}"
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ConfigError(f"{where}; model.name=vit expects {EXPECTED}")
    if shape[0] % cfg.patch or shape[1] % cfg.patch:
        raise ConfigError(f"{where}; model.name=vit needs H and W that are multiples of model.patch={cfg.patch}")


class ViT(nnx.Module):
    def __init__(self, feature_shape: tuple[int, ...], cfg: ViTConfig, out_features: int, *, rngs: nnx.Rngs):
        in_ch = int(feature_shape[2]) if len(feature_shape) == 3 else 1
        patches = (feature_shape[0] // cfg.patch) * (feature_shape[1] // cfg.patch)
        self.rank = len(feature_shape)
        self.pool = cfg.pool
        self.embed = nnx.Conv(in_ch, cfg.dim, (cfg.patch, cfg.patch), (cfg.patch, cfg.patch), padding="VALID",
                              rngs=rngs)
        tokens = patches + (cfg.pool == "cls")
        self.cls = nnx.Param(jnp.zeros((1, 1, cfg.dim))) if cfg.pool == "cls" else None
        self.positions = nnx.Param(EMBED_INIT(rngs.params(), (1, tokens, cfg.dim)))
        self.drop = Dropout(cfg.dropout, rngs=rngs)
        self.blocks = nnx.List([Block(cfg.dim, cfg.heads, cfg.mlp_dim or 4 * cfg.dim, "none", cfg.activation,
                                      cfg.dropout, rngs=rngs, causal=False) for _ in range(cfg.depth)])
        self.norm = nnx.LayerNorm(cfg.dim, rngs=rngs)
        self.head = nnx.Linear(cfg.dim, out_features, rngs=rngs)

    def patch_embed(self, x_BxF: jax.Array) -> jax.Array:
        """Images (B, H, W, C) to patch tokens (B, H/patch * W/patch, dim), row by row."""
        h = x_BxF if self.rank == 3 else x_BxF[..., None]  # channels last
        h = self.embed(h)
        return h.reshape(h.shape[0], -1, h.shape[-1])

    def __call__(self, x_BxF: jax.Array) -> jax.Array:
        h = self.patch_embed(x_BxF)
        if self.cls is not None:
            h = jnp.concatenate([jnp.broadcast_to(self.cls[...].astype(h.dtype), (h.shape[0], 1, h.shape[2])), h], 1)
        h = self.drop(h + self.positions[...].astype(h.dtype))
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.head(h[:, 0] if self.pool == "cls" else h.mean(axis=1))


def build(cfg: ViTConfig, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> ViT:
    check_input(cfg, feature_shape)
    return ViT(tuple(feature_shape), cfg, out_features, rngs=rngs)


def check_dataset(cfg: ViTConfig, info) -> None:
    check_input(cfg, info.feature_shape, dataset=info.name)


register_model("vit", ViTConfig, build, check=check_dataset)
