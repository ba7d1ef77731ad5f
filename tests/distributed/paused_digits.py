"""An experiment file for the interrupted-run test: ``digits_mlp``, whose run waits for a signal.

With ``PAUSE_AFTER_STEP=N`` in the environment, the hook (process 0's; the other processes wait
for it at the next call boundary) holds the run once the train metrics of step N are on the host,
until this process has received SIGINT or SIGTERM (at most ``PAUSE_MAX_S``, 120 seconds): the
test can then stop it at a known step however fast or slow the machine is. Without the variable
it is ``digits_mlp``.
"""

import os
import time

from pipeline import signals
from pipeline.experiments import load_module
from pipeline.hooks import Hook

config = load_module("digits_mlp").config


class PauseForSignal(Hook):
    def __init__(self, after_step: int, max_s: float):
        self.after_step, self.max_s = after_step, max_s

    def after_call(self, steps, metrics) -> None:
        if int(steps[-1]) != self.after_step:
            return
        deadline = time.monotonic() + self.max_s
        while signals.last_signal() is None and time.monotonic() < deadline:
            time.sleep(0.02)


def hooks() -> list[Hook]:
    after = os.environ.get("PAUSE_AFTER_STEP")
    return [PauseForSignal(int(after), float(os.environ.get("PAUSE_MAX_S", "120")))] if after else []
