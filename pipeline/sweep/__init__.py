"""Hyperparameter sweeps: search spaces, strategies, vmapped populations, sweep folders.

The package is also the function ``pipeline.sweep(...)`` (``python.py``): the module's class is made
callable, so ``pipeline.sweep`` names both the subpackage and the Python surface of the command.
"""

import sys
import types
from typing import Any


class _SweepModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pipeline.sweep.python import sweep

        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _SweepModule
