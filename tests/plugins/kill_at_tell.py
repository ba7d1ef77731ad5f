"""SIGKILL this process when the search is told the result of trial N (``PIPELINE_TEST_KILL_AT_TELL=N``):
after that trial's population was recorded finished, inside the append of its results.

For tests/sweep/test_search_optuna.py: ``PIPELINE_TEST_PLUGIN=tests.plugins.kill_at_tell``.
"""

from __future__ import annotations

import os
import signal

from pipeline.sweep import optuna_search

AT = int(os.environ["PIPELINE_TEST_KILL_AT_TELL"])
_tell = optuna_search.OptunaSearch.tell  # an AttributeError here when it is renamed: the test fails loudly


def _tell_or_die(self, trial, *args, **kwargs):
    if trial == AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return _tell(self, trial, *args, **kwargs)


optuna_search.OptunaSearch.tell = _tell_or_die
