"""``profile=START:STEPS``: a ``jax.profiler`` trace of those steps into ``RUN_DIR/profile/``.

The trace covers every compiled call (K steps each) that overlaps steps START .. START + STEPS - 1:
whole calls, so at least those steps. Each traced call carries a step annotation. TensorBoard's
profile plugin, XProf and Perfetto read the result.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax

from pipeline.config import profile_window


class Profiler:
    def __init__(self, text: str, folder: Path):
        self.window, self.folder, self.on = profile_window(text), folder, False

    def call(self, step: int, k: int) -> contextlib.AbstractContextManager:
        """Around the call of steps ``step .. step + k - 1``: starts or stops the trace at its boundaries."""
        if self.window is None:
            return contextlib.nullcontext()
        first, count = self.window
        if self.on and step >= first + count:
            self.stop()
        elif not self.on and step < first + count and step + k > first:
            self.folder.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.folder))
            self.on = True
        return jax.profiler.StepTraceAnnotation("train", step_num=step) if self.on else contextlib.nullcontext()

    def stop(self) -> None:
        if self.on:
            jax.profiler.stop_trace()
            self.on = False
