"""A user's experiment file outside the repository (docs/examples/resmlp.py), and one store for a module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, records_under

EXAMPLE = ROOT / "docs" / "examples" / "resmlp.py"
QUICK = ["steps=60", "eval_every=20", "--no-progress"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A folder outside the repository holding the example experiment, the store, runs and sweeps."""
    root = tmp_path_factory.mktemp("user")
    shutil.copy(EXAMPLE, root / "resmlp.py")
    with records_under(root):
        yield root
