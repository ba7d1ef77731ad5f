"""Optax optimizers and schedules by name, with every numeric hyperparameter a traced value.

The built-ins (``optimizers.py``, ``schedules.py``) register as this package loads, through the
same ``pipeline.register_optimizer`` and ``pipeline.register_schedule`` an experiment file uses;
``make_optimizer`` looks them up by ``optimizer.name`` and ``optimizer.schedule``. See
docs/optimizers.md.
"""

from pipeline.optim import optimizers, schedules  # noqa: F401  (the built-ins register as they load)
from pipeline.optim.build import hyperparams, make_optimizer
from pipeline.optim.mask import decay_mask
from pipeline.optim.schedules import schedule_multiplier
from pipeline.optim.traced import TracedHyperparams, traced_hyperparams

__all__ = ["TracedHyperparams", "decay_mask", "hyperparams", "make_optimizer", "schedule_multiplier",
           "traced_hyperparams"]
