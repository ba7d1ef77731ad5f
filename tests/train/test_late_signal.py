"""A Ctrl-C that lands after a run's last call boundary: the run finishes and records everything, and
the signal is then raised as ``fit`` returns, so a Python loop of ``fit`` calls (an Optuna objective)
stops as any loop stops at Ctrl-C instead of going on to the next trial."""

from __future__ import annotations

import json
import os
import signal

import pytest

import pipeline
from pipeline.config import Config
from pipeline.models import MLPConfig
from pipeline.signals import Terminated

FAST = Config(data="digits", steps=40, eval_every=20, batch_size=32, plot=False, model=MLPConfig(hidden=(16,)))


class SignalAtTheLastSave(pipeline.Hook):
    """Sends the process ``signum`` while the final checkpoint is written: after the last boundary."""

    def __init__(self, signum: int):
        self.signum = signum

    def on_checkpoint(self, step, best):
        if step == FAST.steps:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_loop_of_fits_stops_at_a_late_signal_and_the_finished_run_is_whole(workdir, signum, raised):
    finished = []
    with pytest.raises(raised):
        for trial in range(3):
            run_dir = workdir / "runs" / f"t{trial}"
            pipeline.fit(FAST, hooks=[SignalAtTheLastSave(signum)] if trial == 0 else [], run_dir=run_dir)
            finished.append(trial)
    assert finished == []  # the first fit raised as it returned: the loop went no further
    summary = json.loads((workdir / "runs" / "t0" / "summary.json").read_text())
    assert summary["steps"] == FAST.steps and summary["metrics"]["test/accuracy"] > 0  # nothing of the run was lost
    assert not (workdir / "runs" / "t1").exists()
    # Handled: the next call starts clean.
    result = pipeline.fit(FAST, run_dir=workdir / "runs" / "again")
    assert result.summary["steps"] == FAST.steps
