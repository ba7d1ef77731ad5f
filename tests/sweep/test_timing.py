"""A sweep's bookkeeping in its summary: the time between populations and at evaluation boundaries that
the sweep spends outside its training programs (``pipeline.sweep.timing``)."""

from __future__ import annotations

import pytest

from pipeline.sweep.timing import SweepClock
from tests.sweep.conftest import TINY, sweep


def test_the_share_is_the_bookkeeping_over_the_wall():
    clock = SweepClock(between_populations_s=1.25, at_boundaries_s=0.5)
    assert clock.record(10.0) == {"between_populations_s": 1.25, "at_boundaries_s": 0.5, "bookkeeping_s": 1.75,
                                  "bookkeeping_share": 0.175}
    assert SweepClock().record(0.0)["bookkeeping_share"] == 0.0


def test_a_sweep_of_three_populations_records_the_gaps_between_them(home):
    s = sweep("digits_mlp", *TINY, "optimizer.learning_rate=choice(0.01,0.02,0.03)", "--max-population", "1", "--vmap")
    assert s.summary["populations"] == 3
    timing = s.summary["timing"]
    assert timing["between_populations_s"] > 0  # two gaps: the next population's states and folders
    # A grid sweep does nothing at its boundaries: what is timed there is an empty span, near 0 (not exactly:
    # on a busy machine a thread switch, such as Orbax's writer taking the interpreter, can land inside it).
    assert 0 <= timing["at_boundaries_s"] < 0.1 * s.summary["wall_s"]
    # Each figure is rounded to the millisecond on its own: the sum may differ from its parts by one.
    assert timing["bookkeeping_s"] == pytest.approx(timing["between_populations_s"] + timing["at_boundaries_s"],
                                                    abs=1.5e-3)
    assert 0 < timing["bookkeeping_share"] < 1
    assert timing["bookkeeping_share"] == pytest.approx(timing["bookkeeping_s"] / s.summary["wall_s"], abs=1e-3)
