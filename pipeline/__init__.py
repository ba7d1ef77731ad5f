"""A JAX training pipeline: Flax NNX models, Optax updates, Parquet records."""

__version__ = "0.1.0"
