"""Decoder-only Transformer language model (pre-norm, causal self-attention).

Input: int tokens (B, L) with L <= ``context``. Output: next-token logits (B, L, V), where
the vocabulary V is the dataset's class count. Positions are rotary (applied to queries and
keys in every layer) or a learned table of ``context`` rows. The output layer is the token
embedding transposed when ``tie_embeddings``, else its own linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from pipeline.config import ConfigError, ModelConfig, traced
from pipeline.models.layers import ACTIVATIONS, Dropout
from pipeline.models.mlp import check_common
from pipeline.registry import register_model

EXPECTED = "int tokens of shape (L,)"
ROPE_BASE = 10000.0
EMBED_INIT = nnx.initializers.normal(stddev=0.02)  # GPT-2's: tied logits start near uniform


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    name: str = "transformer"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 0  # 0 means 4 * d_model
    context: int = 128
    position: str = "rotary"  # rotary | learned
    tie_embeddings: bool = True
    activation: str = "gelu"  # sigmoid | tanh | relu | gelu
    dropout: float = traced(0.0, switch=True)

    def validate(self) -> None:
        check_common(self)
        for key in ("d_model", "n_layers", "n_heads", "context"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bad value for 'model.{key}': {getattr(self, key)} must be at least 1")
        if self.d_ff < 0:
            raise ConfigError(f"bad value for 'model.d_ff': {self.d_ff} must not be negative")
        if self.position not in ("rotary", "learned"):
            raise ConfigError(f"bad value for 'model.position': {self.position!r}; choose one of rotary, learned")
        if self.d_model % self.n_heads:
            raise ConfigError(f"bad value for 'model.n_heads': {self.n_heads} does not divide "
                              f"model.d_model={self.d_model}")
        if self.position == "rotary" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"bad value for 'model.n_heads': rotary positions need an even head size, "
                              f"not {self.d_model // self.n_heads}")


def check_input(cfg, feature_shape: tuple[int, ...], feature_dtype: str | None = None,
                task: str | None = None, dataset: str | None = None) -> None:
    """Raise ConfigError naming the dataset's shape and the expected one unless these are tokens.

    ``feature_dtype`` and ``task`` are checked when known (from the dataset's metadata).
    """
    shape = tuple(feature_shape)
    is_tokens = (len(shape) == 1 and shape[0] >= 1
                 and (feature_dtype is None or jnp.issubdtype(jnp.dtype(feature_dtype), jnp.integer))
                 and task in (None, "language_modeling"))
    expected = f"model.name=transformer expects {EXPECTED} with L <= model.context ({cfg.context})"
    if not is_tokens:
        kind = " ".join(str(p) for p in (task, feature_dtype) if p)
        what = f"{kind} features" if kind else "features"
        where = f"dataset '{dataset}' has {what}" if dataset else what
        raise ConfigError(f"{where} of shape {shape}; {expected}")
    if shape[0] > cfg.context:
        where = f"dataset '{dataset}' has" if dataset else "the data has"
        raise ConfigError(f"{where} sequences of length {shape[0]}; {expected} (raise model.context)")


def rotary(x_BxLxNxH: jax.Array) -> jax.Array:
    """Rotate each (first half, second half) pair of the head dimension by a position angle."""
    length, head = x_BxLxNxH.shape[1], x_BxLxNxH.shape[-1]
    inv_freq = ROPE_BASE ** (-jnp.arange(0, head, 2, dtype=jnp.float32) / head)
    angle_LxH2 = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angle_LxH2)[:, None, :], jnp.sin(angle_LxH2)[:, None, :]  # L x 1 x H/2
    x = x_BxLxNxH.astype(jnp.float32)  # angles in float32 whatever the compute dtype
    x1, x2 = x[..., : head // 2], x[..., head // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


class Block(nnx.Module):
    """x + attention(norm(x)); x + mlp(norm(x)). ``causal=False`` lets every position see all others (ViT)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, position: str, activation: str,
                 dropout: float = 0.0, *, rngs: nnx.Rngs, causal: bool = True):
        self.n_heads = n_heads
        self.causal = causal
        self.position = position
        self.activation = activation
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.down = nnx.Linear(d_ff, d_model, rngs=rngs)
        self.drop_attn = Dropout(dropout, rngs=rngs)
        self.drop_mlp = Dropout(dropout, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        b, length, d = x_BxLxD.shape
        qkv = self.qkv(self.norm1(x_BxLxD)).reshape(b, length, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.position == "rotary":
            q, k = rotary(q), rotary(k)
        attn = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal).reshape(b, length, d)
        x_BxLxD = x_BxLxD + self.drop_attn(self.out(attn))
        h = self.down(ACTIVATIONS[self.activation](self.up(self.norm2(x_BxLxD))))
        return x_BxLxD + self.drop_mlp(h)


class Transformer(nnx.Module):
    def __init__(self, cfg, vocab: int, *, rngs: nnx.Rngs):
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.context = cfg.context
        self.tie = cfg.tie_embeddings
        self.embed = nnx.Embed(vocab, cfg.d_model, embedding_init=EMBED_INIT, rngs=rngs)
        self.positions = (nnx.Embed(cfg.context, cfg.d_model, embedding_init=EMBED_INIT, rngs=rngs)
                          if cfg.position == "learned" else None)
        self.drop = Dropout(cfg.dropout, rngs=rngs)
        self.blocks = nnx.List([Block(cfg.d_model, cfg.n_heads, d_ff, cfg.position, cfg.activation, cfg.dropout,
                                      rngs=rngs) for _ in range(cfg.n_layers)])
        self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.unembed = None if self.tie else nnx.Linear(cfg.d_model, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        if not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):  # at trace time, before compiling
            raise ConfigError(f"model.name=transformer got {tokens_BxL.dtype} features; it expects {EXPECTED}")
        h = self.embed(tokens_BxL)
        if self.positions is not None:
            h = h + self.positions(jnp.arange(tokens_BxL.shape[1]))[None]
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.embed.attend(h) if self.tie else self.unembed(h)


def build(cfg: TransformerConfig, feature_shape: tuple[int, ...], out_features: int,
          rngs: nnx.Rngs) -> Transformer:
    check_input(cfg, feature_shape)
    if out_features < 2:
        raise ConfigError(f"model.name=transformer needs a token vocabulary (the dataset's classes), "
                          f"not {out_features} output")
    return Transformer(cfg, out_features, rngs=rngs)


def check_dataset(cfg: TransformerConfig, info) -> None:
    check_input(cfg, info.feature_shape, info.feature_dtype, info.task, dataset=info.name)


def transformer_matmul_params(cfg: TransformerConfig, vocab: int) -> int:
    d, f = cfg.d_model, cfg.d_ff or 4 * cfg.d_model
    per_layer = 3 * d * d + d * d + 2 * d * f  # qkv, attention output, MLP up and down
    return cfg.n_layers * per_layer + vocab * d  # + the output projection


def transformer_train_flops(cfg: TransformerConfig, vocab: int, batch: int, length: int,
                            causal: bool = True) -> float:
    """6 x matmul parameters x tokens, plus causal attention 6 x layers x batch x length^2 x d_model."""
    tokens = batch * length
    weights = 6.0 * transformer_matmul_params(cfg, vocab) * tokens
    attention = 12.0 * cfg.n_layers * batch * length**2 * cfg.d_model
    return weights + (attention / 2 if causal else attention)


def train_flops(cfg: TransformerConfig, feature_shape: tuple[int, ...], out_features: int, batch: int) -> float:
    return transformer_train_flops(cfg, out_features, batch, int(feature_shape[0]))


register_model("transformer", TransformerConfig, build, check=check_dataset, flops=train_flops)
