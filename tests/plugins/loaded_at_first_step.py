"""``loaded_modules``, plus the heavy modules loaded when the first training step starts (``"first_step"``).

For tests/test_imports.py: ``PIPELINE_TEST_PLUGIN=tests.plugins.loaded_at_first_step python -m pipeline train ...``.
"""

from __future__ import annotations

from pipeline.train import population
from tests.plugins.loaded_modules import SEEN, loaded

_step = population.SoloPopulation.step  # an AttributeError here when it is renamed: the test fails loudly


def _first(self, *args, **kwargs):
    SEEN.setdefault("first_step", loaded())
    return _step(self, *args, **kwargs)


population.SoloPopulation.step = _first
