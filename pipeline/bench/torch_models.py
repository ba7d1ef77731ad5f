"""PyTorch twins of the pipeline's model families, layer for layer, for the peer measurements.

Same layer shapes, activations, normalisation, pooling, rotary positions and tied output
as pipeline/models/*, so both sides do the same arithmetic (tests compare parameter
counts). Importing this module imports torch: only the torch peer does, lazily.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.transformer import ROPE_BASE

ACTIVATIONS = {"relu": F.relu, "gelu": lambda x: F.gelu(x, approximate="tanh"), "tanh": torch.tanh,
               "sigmoid": torch.sigmoid}


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int, activation: str):
        super().__init__()
        widths = (in_features, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], out_features)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = self.act(layer(h))
        return self.head(h)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a channels-first tensor (flax normalises the last axis)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x):
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class CNN(nn.Module):
    def __init__(self, feature_shape: tuple[int, ...], cfg: ModelConfig, out_features: int):
        super().__init__()
        if cfg.stride != 1 or cfg.kernel_size % 2 == 0:
            raise NotImplementedError("the torch twin of the CNN takes stride 1 and odd kernel sizes")
        self.rank = len(feature_shape)
        spatial = tuple(feature_shape[:2]) if self.rank == 3 else tuple(feature_shape)
        in_ch = feature_shape[2] if self.rank == 3 else 1
        conv = nn.Conv2d if len(spatial) == 2 else nn.Conv1d
        batch_norm = nn.BatchNorm2d if len(spatial) == 2 else nn.BatchNorm1d
        blocks: list[nn.Module] = []
        for out_ch in cfg.channels:
            blocks.append(conv(in_ch, out_ch, cfg.kernel_size, padding="same", bias=cfg.norm != "batch"))
            if cfg.norm == "batch":
                blocks.append(batch_norm(out_ch, momentum=0.1))
            elif cfg.norm == "layer":
                blocks.append(ChannelLayerNorm(out_ch))
            blocks.append(_Activation(cfg.activation))
            window = tuple(2 if n >= 2 and cfg.pool != "none" else 1 for n in spatial)
            if any(w > 1 for w in window):
                pool = nn.MaxPool2d if cfg.pool == "max" else nn.AvgPool2d
                if len(spatial) == 1:
                    pool = nn.MaxPool1d if cfg.pool == "max" else nn.AvgPool1d
                blocks.append(pool(window if len(window) > 1 else window[0]))
            spatial = tuple(n // w for n, w in zip(spatial, window))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        widths = (math.prod(spatial) * in_ch, *cfg.hidden)
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], out_features)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        h = x.movedim(-1, 1) if self.rank == 3 else x[:, None]  # channels first
        h = self.features(h).flatten(1)
        for layer in self.dense:
            h = self.act(layer(h))
        return self.head(h)


class _Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.fn = ACTIVATIONS[name]

    def forward(self, x):
        return self.fn(x)


def rotary(x_BxLxNxH: torch.Tensor) -> torch.Tensor:
    length, head = x_BxLxNxH.shape[1], x_BxLxNxH.shape[-1]
    inv_freq = ROPE_BASE ** (-torch.arange(0, head, 2, dtype=torch.float32, device=x_BxLxNxH.device) / head)
    angle = torch.arange(length, dtype=torch.float32, device=x_BxLxNxH.device)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    x = x_BxLxNxH.float()
    x1, x2 = x[..., : head // 2], x[..., head // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BxLxNxH.dtype)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, position: str, activation: str):
        super().__init__()
        self.heads, self.position = heads, position
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        b, length, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.unbind(2)
        if self.position == "rotary":
            q, k = rotary(q), rotary(k)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(attn.transpose(1, 2).reshape(b, length, d))
        return x + self.down(self.act(self.up(self.norm2(x))))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: int):
        super().__init__()
        d_ff = cfg.d_ff or 4 * cfg.d_model
        self.embed = nn.Embedding(vocab, cfg.d_model)
        self.positions = nn.Embedding(cfg.context, cfg.d_model) if cfg.position == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_heads, d_ff, cfg.position, cfg.activation)
                                    for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.unembed = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab, bias=False)

    def forward(self, tokens):
        h = self.embed(tokens)
        if self.positions is not None:
            h = h + self.positions(torch.arange(tokens.shape[1], device=tokens.device))[None]
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return h @ self.embed.weight.T if self.unembed is None else self.unembed(h)


# The built-in families that have a PyTorch twin; any other family has no torch peer.
TWINS = {
    "mlp": lambda cfg, shape, out: MLP(math.prod(shape), tuple(cfg.hidden), out, cfg.activation),
    "cnn": lambda cfg, shape, out: CNN(tuple(shape), cfg, out),
    "transformer": lambda cfg, shape, out: Transformer(cfg, out),
}


def build(cfg: ModelConfig, feature_shape: tuple[int, ...], out_features: int) -> nn.Module:
    if cfg.name not in TWINS:
        raise NotImplementedError(f"no torch twin of model.name={cfg.name}")
    return TWINS[cfg.name](cfg, feature_shape, out_features)
