"""Every training step sleeps ``PIPELINE_TEST_STEP_SLEEP`` seconds (on the host, through a callback the step's
result depends on), and ``PIPELINE_TEST_STEP_LOG`` (when set) gets a line per step: a model that is slow for
a test, with the very program (and so the very results) of an unslowed run under this plugin.

For tests/train/test_call_time.py: ``PIPELINE_TEST_PLUGIN=tests.plugins.slow_step``.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from pipeline.train import step

SLEEP = float(os.environ.get("PIPELINE_TEST_STEP_SLEEP", "0"))
LOG = os.environ.get("PIPELINE_TEST_STEP_LOG", "")
_train_step = step.train_step  # an AttributeError here when it is renamed: the test fails loudly


def _slowly(count: np.ndarray) -> np.ndarray:
    time.sleep(SLEEP)
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{int(count)}\n")
    return count


def _slow_train_step(spec, state, x, y):
    new, metrics = _train_step(spec, state, x, y)
    count = jax.pure_callback(_slowly, jax.ShapeDtypeStruct(new.step.shape, new.step.dtype), new.step)
    return new.replace(step=count), metrics


step.train_step = _slow_train_step
