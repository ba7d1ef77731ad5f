"""The pipeline measured with its own code: ``prepare`` and the run's own compiled program.

Each call runs K steps (``steps_per_call``, chosen as ``pipeline train`` chooses it), over the
state's leaves with the run's shardings, as a run's ``SoloPopulation`` calls it; after
dispatching call N the host reads back the metrics of call N-1 and checks the loss, as
a run does, and each call's batches come from the run's own feed (``Batches``: the host's
epoch order, its row indices placed on the device). Evaluation, checkpoints and metric
files are left out: they are not steps. The input share is the time of the input part
alone (the indices made and placed, the rows gathered on the device) over the step time.

The same runner, given another config, measures the loop's other ways: one step per
dispatch (``steps_per_call=1``, the loop suite's ``host_loop``) and a training split
streamed from disk (``data.max_device_bytes=0``, the stream-train suite's ``streaming``).
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from pipeline.bench.measure import Runner, check_fits, device_peak_bytes, program_bytes, xla_flops
from pipeline.bench.timing import Budget, Timing, time_alone
from pipeline.bench.workload import Workload
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.train.parts import Prepared, open_feed, prepare, solo_programs, train_step

INPUT_BUDGET = Budget(warmup=2, rounds=5, round_s=0.05)


class Batches:
    """The arguments of a run's compiled calls, in step order, from the run's own feed."""

    def __init__(self, prep: Prepared, start_step: int):
        self.prep, self.step = prep, start_step
        self.feed = open_feed(prep, start_step)

    def args(self) -> tuple:
        k = self.prep.steps_per_call
        first, self.step = self.step, self.step + k
        return self.feed.member_args(0, first, k)

    def close(self) -> None:
        self.feed.close()


class PipelineRunner(Runner):
    impl = "pipeline"

    def __init__(self, workload: Workload, impl: str = "pipeline", cfg: Config | None = None,
                 input_share: bool = True):
        self.impl = impl
        super().__init__()
        self.workload, self.cfg, self.with_input_share = workload, cfg or workload.cfg, input_share
        self.prep = self.batches = None

    def setup(self) -> None:
        prep = self.prep = prepare(self.cfg, self.workload.store)
        self.steps_per_unit = prep.steps_per_call
        programs = solo_programs(prep.spec, prep.steps_per_call, prep.reader is not None, prep.shardings)
        self.call = programs.run_leaves.jitted(jax.tree.structure(prep.state))
        self.batches = Batches(prep, 0)
        leaves = jax.tree.leaves(prep.state)
        start = time.perf_counter()
        program = self.call.lower(leaves, *self.batches.args()).compile()  # later calls reuse it
        self.m.compile_s = time.perf_counter() - start
        self.m.mem_program_bytes = program_bytes(program)
        check_fits(program, "the pipeline's program")
        self.m.flops_xla = step_flops(prep) if prep.train is not None else None
        self.state, self.pending = leaves, None

    def run(self, units: int) -> None:
        state, pending = self.state, self.pending
        for _ in range(units):
            state, metrics = self.call(state, *self.batches.args())
            if pending is not None:  # the previous call's metrics, while this one runs
                loss = np.asarray(jax.device_get(pending)["loss"])
                if not np.isfinite(loss).all():
                    raise PipelineError("non-finite loss while benchmarking")
            pending = metrics
        jax.block_until_ready(state)
        self.state, self.pending = state, pending

    def result(self, timing: Timing):
        m = super().result(timing)
        m.mem_peak_bytes = device_peak_bytes()
        if self.with_input_share and self.prep.train is not None:
            m.input_share = min(input_seconds_per_step(self.prep) / timing.median, 1.0)
        return m

    def close(self) -> None:
        if self.batches is not None:
            self.batches.close()  # the streaming reader's thread and files
        self.prep = self.state = self.pending = self.call = self.batches = None


def step_flops(prep) -> float | None:
    """FLOPs of one pipeline train step (XLA counts a scanned loop's body once, so compile one)."""
    b = prep.spec.batch_size
    step = jax.jit(functools.partial(train_step, prep.spec))
    return xla_flops(step.lower(prep.state, prep.train.x[:b], prep.train.y[:b]).compile())


class _Input:
    """The input part of K pipeline steps alone: the row indices made and placed, the rows gathered."""

    def __init__(self, prep):
        self.steps_per_unit = prep.steps_per_call
        self.batches = Batches(prep, 0)
        self.gather = jax.jit(lambda x_all, y_all, idx: (x_all[idx], y_all[idx]))

    def run(self, units: int) -> None:
        for _ in range(units):
            out = self.gather(*self.batches.args())
        jax.block_until_ready(out)


def input_seconds_per_step(prep) -> float:
    return time_alone(_Input(prep), INPUT_BUDGET).median
