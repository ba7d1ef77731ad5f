"""SIGKILL this process right after its N-th checkpoint save (``PIPELINE_TEST_KILL_AFTER_SAVE=N``) was handed
to Orbax, while that save is still being written in the background.

For tests/train/test_async_checkpoint.py: ``PIPELINE_TEST_PLUGIN=tests.plugins.kill_after_save``.
"""

from __future__ import annotations

import os
import signal

from pipeline.train import checkpoint

AFTER = int(os.environ["PIPELINE_TEST_KILL_AFTER_SAVE"])
_save = checkpoint.Checkpointer.save  # an AttributeError here when it is renamed: the test fails loudly
_count = 0


def _save_then_kill(self, *args, **kwargs):
    global _count
    result = _save(self, *args, **kwargs)
    _count += 1
    if _count == AFTER:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


checkpoint.Checkpointer.save = _save_then_kill
