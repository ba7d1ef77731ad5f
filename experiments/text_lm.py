"""A small byte-level Transformer language model on the standard library's source (builtin:text).

Reports test bits per byte (8 would be a uniform guess over the 256 byte values).
"""

from pipeline.config import Config, OptimizerConfig
from pipeline.models import TransformerConfig


def config() -> Config:
    return Config(
        data="text",
        steps=600,
        batch_size=32,
        eval_every=300,
        eval_batch_size=256,
        model=TransformerConfig(d_model=128, n_layers=2, n_heads=4, context=128,
                          position="rotary", tie_embeddings=True, activation="gelu", dropout=0.0),
        optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine",
                                  warmup_steps=50, weight_decay=0.01, clip_norm=1.0),
    )
