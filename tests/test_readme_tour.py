"""The README's tour names only files a reader has: an experiment file it trains is a file of this
checkout, and the README says so next to the tour (an installed package does not ship docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tour() -> tuple[list[str], str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("A short tour:", 1)[1].split("```", 2)[1]
    after = text.split("A short tour:", 1)[1].split("```", 2)[2].split("\n\n", 2)[1]
    return block.strip().splitlines(), after


def test_experiment_files_of_the_tour_are_in_the_checkout_and_said_to_be():
    lines, after = tour()
    files = [m for line in lines for m in re.findall(r"pipeline (?:train|sweep|bench) (\S+\.py)\b", line)]
    assert files == ["docs/examples/resmlp.py"]
    for name in files:
        assert (ROOT / name).is_file()
        # The tour's line trains it (tests/extending runs it); here only that it is an experiment file, not
        # loaded: loading registers its model, which other tests in this process register from a copy.
        assert "def config(" in (ROOT / name).read_text()
        assert f"`{name}` is a file of this repository's checkout, not of the installed package" in " ".join(
            after.split())
