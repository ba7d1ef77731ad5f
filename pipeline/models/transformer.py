"""Decoder-only Transformer language model (pre-norm, causal self-attention).

Input: int tokens (B, L) with L <= ``context``. Output: next-token logits (B, L, V), where
the vocabulary V is the dataset's class count. Positions are rotary (applied to queries and
keys in every layer) or a learned table of ``context`` rows. The output layer is the token
embedding transposed when ``tie_embeddings``, else its own linear layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pipeline.config import ConfigError
from pipeline.models.layers import ACTIVATIONS, dropout

EXPECTED = "int tokens of shape (L,)"
ROPE_BASE = 10000.0
EMBED_INIT = nnx.initializers.normal(stddev=0.02)  # GPT-2's: tied logits start near uniform


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
    """x + attention(norm(x)); x + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, position: str, activation: str,
                 *, rngs: nnx.Rngs):
        self.n_heads = n_heads
        self.position = position
        self.activation = activation
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.down = nnx.Linear(d_ff, d_model, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array, dropout_rate, key: jax.Array | None) -> jax.Array:
        b, length, d = x_BxLxD.shape
        qkv = self.qkv(self.norm1(x_BxLxD)).reshape(b, length, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.position == "rotary":
            q, k = rotary(q), rotary(k)
        attn = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, length, d)
        keys = (None, None) if key is None else jax.random.split(key)
        x_BxLxD = x_BxLxD + dropout(self.out(attn), dropout_rate, keys[0])
        h = self.down(ACTIVATIONS[self.activation](self.up(self.norm2(x_BxLxD))))
        return x_BxLxD + dropout(h, dropout_rate, keys[1])


class Transformer(nnx.Module):
    def __init__(self, cfg, vocab: int, *, rngs: nnx.Rngs):
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.context = cfg.context
        self.tie = cfg.tie_embeddings
        self.embed = nnx.Embed(vocab, cfg.d_model, embedding_init=EMBED_INIT, rngs=rngs)
        self.positions = (nnx.Embed(cfg.context, cfg.d_model, embedding_init=EMBED_INIT, rngs=rngs)
                          if cfg.position == "learned" else None)
        self.blocks = nnx.List([Block(cfg.d_model, cfg.n_heads, d_ff, cfg.position, cfg.activation, rngs=rngs)
                                for _ in range(cfg.n_layers)])
        self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.unembed = None if self.tie else nnx.Linear(cfg.d_model, vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens_BxL: jax.Array, *, dropout_rate: jax.Array | float = 0.0,
                 key: jax.Array | None = None) -> jax.Array:
        if not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):  # at trace time, before compiling
            raise ConfigError(f"model.name=transformer got {tokens_BxL.dtype} features; it expects {EXPECTED}")
        h = self.embed(tokens_BxL)
        if self.positions is not None:
            h = h + self.positions(jnp.arange(tokens_BxL.shape[1]))[None]
        h = dropout(h, dropout_rate, None if key is None else jax.random.fold_in(key, 0))
        for i, block in enumerate(self.blocks):
            h = block(h, dropout_rate, None if key is None else jax.random.fold_in(key, i + 1))
        h = self.norm(h)
        return self.embed.attend(h) if self.tie else self.unembed(h)


def build(cfg, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> Transformer:
    for key in ("d_model", "n_layers", "n_heads", "context"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"bad value for 'model.{key}': must be at least 1")
    check_input(cfg, feature_shape)
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(f"bad value for 'model.n_heads': {cfg.n_heads} does not divide model.d_model={cfg.d_model}")
    if cfg.position == "rotary" and (cfg.d_model // cfg.n_heads) % 2:
        raise ConfigError(f"bad value for 'model.n_heads': rotary positions need an even head size, "
                          f"not {cfg.d_model // cfg.n_heads}")
    if out_features < 2:
        raise ConfigError(f"model.name=transformer needs a token vocabulary (the dataset's classes), "
                          f"not {out_features} output")
    return Transformer(cfg, out_features, rngs=rngs)
