"""The default experiment: an MLP on scikit-learn's 8x8 handwritten digits."""

from pipeline.config import Config, OptimizerConfig
from pipeline.models import MLPConfig


def config() -> Config:
    return Config(
        data="digits",
        objective="classification",  # a classification experiment: on other data it is refused in one line
        steps=2000,
        batch_size=64,
        eval_every=500,
        model=MLPConfig(hidden=(128,), activation="relu"),
        optimizer=OptimizerConfig(name="adam", learning_rate=1e-3),
    )


def sweep() -> dict[str, str]:
    """`pipeline sweep digits_mlp`: 4 learning rates x 4 seeds, one vmapped population of 16."""
    return {"optimizer.learning_rate": "logspace(3e-4,3e-2,4)", "seed": "range(4)"}
