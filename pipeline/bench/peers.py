"""Measure one model point with the pipeline and every peer, side by side in one run."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.bench import torch_peer
from pipeline.bench.environment import device_free_bytes, device_memory_bytes
from pipeline.bench.jax_bare import BareRunner, BareScanRunner
from pipeline.bench.measure import OUT_OF_MEMORY, UNAVAILABLE, DeviceOutOfMemory, Measurement, Runner, missing
from pipeline.bench.pipeline_loop import PipelineRunner
from pipeline.bench.points import Point
from pipeline.bench.results import IMPLS
from pipeline.bench.schedule import SKIPPED, time_each, time_together
from pipeline.bench.timing import Deadline
from pipeline.bench.workload import RUN_STEPS, Workload
from pipeline.train.parts import choose_steps_per_call

# An implementation made from the point's workload; ``factories`` of ``measure_point`` put one
# in place of a built-in implementation of the same name (a peer of your own, or a test's).
Factory = Callable[[Workload], Runner]
# Parameters, gradients and two Adam moments in float32; activations come on top.
STATE_BYTES_PER_PARAM = 16
# Implementations are kept in memory together (and timed round-robin) while their states
# fit in this share of the device's memory; beyond it they run one after another.
SHARED_MEMORY_SHARE = 0.25


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def runners_for(workload: Workload, peers: tuple[str, ...],
                factories: dict[str, Factory] | None = None) -> tuple[list[Runner], list[Measurement]]:
    """Runners for the wanted implementations, and records for those that cannot run."""
    k = choose_steps_per_call(workload.cfg, RUN_STEPS)
    runners: list[Runner] = []
    absent: list[Measurement] = []
    torch_missing = torch_peer.unavailable(workload)
    for impl in IMPLS:
        if impl not in peers:
            absent.append(missing(impl, SKIPPED, "not in --peers"))
        elif factories and impl in factories:
            runners.append(factories[impl](workload))
        elif impl == "pipeline":
            runners.append(PipelineRunner(workload))
        elif impl == "jax_bare":
            runners.append(BareRunner(workload))
        elif impl == "jax_bare_scan":
            runners.append(BareScanRunner(workload, k))
        elif torch_missing:
            absent.append(missing(impl, *torch_missing))
        else:
            runners.append(torch_peer.TorchRunner(workload, compile_model=impl == "torch_compile"))
    return runners, absent


def _torch_fits(runner: Runner, jax_runners: list[Runner]) -> None:
    """PyTorch allocates as it goes (on CPU the kernel may kill the process instead of raising):
    refuse it up front when the pipeline's compiled program already needs more than is free."""
    if not isinstance(runner, torch_peer.TorchRunner):
        return
    known = [r.m.mem_program_bytes for r in jax_runners if r.m.mem_program_bytes]
    free = device_free_bytes()
    if known and free is not None and max(known) > free:
        raise DeviceOutOfMemory(f"out of memory: the same step compiled by XLA needs {gib(max(known))}, "
                                f"{gib(free)} free")


def measure_point(point: Point, workload: Workload, peers: tuple[str, ...], echo: Callable[[str], None],
                  deadline: Deadline | None = None, factories: dict[str, Factory] | None = None) -> list[Measurement]:
    """Measurements in IMPLS order; missing and failed implementations are recorded, not dropped."""
    runners, absent = runners_for(workload, peers, factories)
    done: dict[str, Measurement] = {m.impl: m for m in absent}
    state_bytes = workload.param_count * STATE_BYTES_PER_PARAM
    available = device_memory_bytes()
    needs = f"{workload.param_count:,} parameters; optimizer state alone {gib(state_bytes)}" + (
        f", device has {gib(available)}" if available else "")
    if available and state_bytes > available:
        for r in runners:
            done[r.impl] = missing(r.impl, OUT_OF_MEMORY, needs)
        runners = []

    def fits(r: Runner) -> None:
        _torch_fits(r, runners)

    if not available or state_bytes * len(runners) < SHARED_MEMORY_SHARE * available:
        time_together(runners, point.budget, done, echo, deadline, needs, before_setup=fits)
    else:
        time_each(runners, point.budget, done, echo, deadline, needs, before_setup=fits,
                  note="compiling and timing alone (large model)")
    return [done.get(impl) or missing(impl, UNAVAILABLE, "not measured") for impl in IMPLS]
