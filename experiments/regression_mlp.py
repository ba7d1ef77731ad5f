"""An MLP regressor on the built-in synthetic regression set (8 features, one target)."""

from pipeline.config import Config, ModelConfig, OptimizerConfig


def config() -> Config:
    return Config(
        data="regression",
        steps=3000,
        batch_size=64,
        eval_every=500,
        model=ModelConfig(name="mlp", hidden=(64, 64), activation="gelu"),
        optimizer=OptimizerConfig(name="adam", learning_rate=3e-3, schedule="cosine"),
    )
