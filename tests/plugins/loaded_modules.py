"""Print, as the last line of stdout when the process exits, the heavy modules it loaded (JSON ``{"end": [...]}``).

For tests/test_imports.py: ``PIPELINE_TEST_PLUGIN=tests.plugins.loaded_modules python -m pipeline ARGS``.
"""

from __future__ import annotations

import atexit
import json
import sys

HEAVY = ("jax", "matplotlib", "orbax.checkpoint", "flax")
# The command line's own argument definitions for `pipeline bench` (argparse only) are no bench module.
PARSER_ONLY = ("pipeline.bench", "pipeline.bench.command")

SEEN: dict[str, list[str]] = {}


def loaded() -> list[str]:
    return sorted(m for m in sys.modules if m in HEAVY or (m.startswith("pipeline.bench") and m not in PARSER_ONLY))


@atexit.register  # registered before the command runs, so it runs after every other exit handler
def _report() -> None:
    print(json.dumps({**SEEN, "end": loaded()}), flush=True)
