"""An MLP regressor on the built-in synthetic regression set (8 features, one target)."""

from pipeline.config import Config, OptimizerConfig
from pipeline.models import MLPConfig


def config() -> Config:
    return Config(
        data="regression",
        objective="regression",  # a regression experiment: on other data it is refused in one line
        steps=3000,
        batch_size=64,
        eval_every=500,
        model=MLPConfig(hidden=(64, 64), activation="gelu"),
        optimizer=OptimizerConfig(name="adam", learning_rate=3e-3, schedule="cosine"),
    )
