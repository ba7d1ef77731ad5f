"""Turn off ``RENAME_EXCHANGE``, so a data import takes the paths that move the old folder aside.

For tests/data/test_reliability.py:
``PIPELINE_TEST_PLUGIN=tests.plugins.no_exchange python -m pipeline data import ...``.
"""

from __future__ import annotations

from pipeline.durable import renames

assert isinstance(renames.EXCHANGE, bool)  # an AttributeError here when it is renamed: the test fails loudly
renames.EXCHANGE = False
