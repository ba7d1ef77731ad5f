"""The training loop measured two ways at a time, with the loop's own code (``PipelineRunner``).

* ``loop`` points: the scanned loop (K steps per dispatch, K chosen as ``pipeline train``
  chooses it) against a host loop dispatching the same compiled program once per step
  (K = 1, each call's row indices from the loop's own ``Batches``). Timed round-robin.
* ``stream`` points: training fed by the streaming reader (``data.max_device_bytes=0``:
  row groups read in a shuffled order, mixed, prefetched on a thread and placed on the
  device K batches a call) against the same config with the training split resident on
  the device. Timed one after the other, so the reader's thread never runs beside the
  resident loop's rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pipeline.bench.measure import Measurement, Runner, missing
from pipeline.bench.pipeline_loop import PipelineRunner
from pipeline.bench.points import Point
from pipeline.bench.results import impls_of
from pipeline.bench.schedule import SKIPPED, time_each, time_together
from pipeline.bench.timing import Deadline
from pipeline.bench.workload import Workload
from pipeline.config import apply_overrides

RESIDENT_BYTES = 1 << 60  # a device budget no split exceeds (the largest the config takes)


def measure_ways(point: Point, runners: dict[str, Callable[[], Runner]], peers: tuple[str, ...],
                 echo: Callable[[str], None], deadline: Deadline | None, together: bool) -> list[Measurement]:
    """The point's ways (runners made only when wanted), in ``impls_of(point.family)`` order."""
    done: dict[str, Measurement] = {}
    chosen = []
    for impl, make in runners.items():
        if impl in peers:
            chosen.append(make())
        else:
            done[impl] = missing(impl, SKIPPED, "not in --peers")
    (time_together if together else time_each)(chosen, point.budget, done, echo, deadline)
    return [done[impl] for impl in impls_of(point.family)]


def measure_loop(point: Point, workload: Workload, peers: tuple[str, ...], echo: Callable[[str], None],
                 deadline: Deadline | None = None) -> list[Measurement]:
    host = dataclasses.replace(workload.cfg, steps_per_call=1)
    runners = {"scanned": lambda: PipelineRunner(workload, "scanned", input_share=False),
               "host_loop": lambda: PipelineRunner(workload, "host_loop", host, input_share=False)}
    return measure_ways(point, runners, peers, echo, deadline, together=True)


def measure_stream(point: Point, workload: Workload, peers: tuple[str, ...], echo: Callable[[str], None],
                   deadline: Deadline | None = None) -> list[Measurement]:
    resident = apply_overrides(workload.cfg, [f"data.max_device_bytes={RESIDENT_BYTES}"])
    streamed = apply_overrides(workload.cfg, ["data.max_device_bytes=0"])
    runners = {"resident": lambda: PipelineRunner(workload, "resident", resident, input_share=False),
               "streaming": lambda: PipelineRunner(workload, "streaming", streamed, input_share=False)}
    return measure_ways(point, runners, peers, echo, deadline, together=False)
