"""A small CNN on scikit-learn's 8x8 handwritten digits: two 3x3 conv blocks, then a dense head."""

from pipeline.config import Config, OptimizerConfig
from pipeline.models import CNNConfig


def config() -> Config:
    return Config(
        data="digits",
        steps=1000,
        batch_size=64,
        eval_every=500,
        model=CNNConfig(channels=(16, 32), kernel_size=3, pool="max", norm="none",
                          hidden=(128,), activation="relu", dropout=0.1),
        optimizer=OptimizerConfig(name="adam", learning_rate=1e-3),
    )
