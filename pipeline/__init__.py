"""A JAX training pipeline: Flax NNX models, Optax updates, Parquet records.

The Python surface (loaded on first use, so ``import pipeline`` stays light):
``fit``, ``load_run``, ``sweep``, ``predict``, ``export``, ``register_model``, ``register_objective``,
``register_optimizer``, ``register_schedule``, ``Config``, ``ModelConfig``,
``OptimizerConfig``, ``DataConfig``, ``traced``, ``Objective``, ``Hook``, ``RunInfo``, ``PipelineError``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "fit": "pipeline.api", "load_run": "pipeline.api", "FitResult": "pipeline.api",
    "register_model": "pipeline.registry", "register_objective": "pipeline.registry",
    "register_optimizer": "pipeline.registry", "register_schedule": "pipeline.registry",
    "Config": "pipeline.config", "ModelConfig": "pipeline.config", "OptimizerConfig": "pipeline.config",
    "DataConfig": "pipeline.config", "traced": "pipeline.config",
    "Objective": "pipeline.objectives", "PipelineError": "pipeline.errors",
    "Hook": "pipeline.hooks", "RunInfo": "pipeline.hooks",
    "sweep": "pipeline.sweep", "SweepResult": "pipeline.sweep.python",
    "predict": "pipeline.predict", "export": "pipeline.export_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in ("sweep", "predict"):  # a module that is also the function (pipeline/sweep/__init__.py)
        return importlib.import_module(_EXPORTS[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
