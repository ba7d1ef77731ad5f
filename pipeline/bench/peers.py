"""Measure one model point with the pipeline and every peer, side by side in one run."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.bench import torch_peer
from pipeline.bench.environment import device_free_bytes, device_memory_bytes
from pipeline.bench.jax_bare import BareRunner, BareScanRunner
from pipeline.bench.measure import (
    FAILED,
    OUT_OF_MEMORY,
    UNAVAILABLE,
    DeviceOutOfMemory,
    Measurement,
    Runner,
    is_out_of_memory,
    missing,
)
from pipeline.bench.pipeline_loop import PipelineRunner
from pipeline.bench.points import Point
from pipeline.bench.results import IMPLS
from pipeline.bench.timing import RoundRobin, time_alone
from pipeline.bench.workload import RUN_STEPS, Workload
from pipeline.train.loop import choose_steps_per_call

SKIPPED = "skipped"
# Parameters, gradients and two Adam moments in float32; activations come on top.
STATE_BYTES_PER_PARAM = 16
# Implementations are kept in memory together (and timed round-robin) while their states
# fit in this share of the device's memory; beyond it they run one after another.
SHARED_MEMORY_SHARE = 0.25


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def runners_for(workload: Workload, peers: tuple[str, ...]) -> tuple[list[Runner], list[Measurement]]:
    """Runners for the wanted implementations, and records for those that cannot run."""
    k = choose_steps_per_call(workload.cfg, RUN_STEPS)
    runners: list[Runner] = []
    absent: list[Measurement] = []
    torch_missing = torch_peer.unavailable(workload)
    for impl in IMPLS:
        if impl not in peers:
            absent.append(missing(impl, SKIPPED, "not in --peers"))
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


def _failure(impl: str, exc: BaseException, needs: str) -> Measurement:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if is_out_of_memory(exc):
        return missing(impl, OUT_OF_MEMORY, f"{needs}; {first_line}")
    return missing(impl, FAILED, f"{type(exc).__name__}: {first_line}")


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


def _guarded(runner: Runner, done: dict[str, Measurement], needs: str, fn: Callable[[], object]) -> bool:
    """Run ``fn``; on an exception record the runner as failed (or out of memory) and free it."""
    try:
        fn()
        return True
    except Exception as exc:  # one implementation failing must not stop the others
        done[runner.impl] = _failure(runner.impl, exc, needs)
        try:
            runner.close()
        except Exception:  # noqa: BLE001 - freeing a half-built runner must not end the suite either
            pass
        return False


def measure_point(point: Point, workload: Workload, peers: tuple[str, ...],
                  echo: Callable[[str], None]) -> list[Measurement]:
    """Measurements in IMPLS order; missing and failed implementations are recorded, not dropped."""
    runners, absent = runners_for(workload, peers)
    done: dict[str, Measurement] = {m.impl: m for m in absent}
    state_bytes = workload.param_count * STATE_BYTES_PER_PARAM
    available = device_memory_bytes()
    needs = f"{workload.param_count:,} parameters; optimizer state alone {gib(state_bytes)}" + (
        f", device has {gib(available)}" if available else "")
    if available and state_bytes > available:
        for r in runners:
            done[r.impl] = missing(r.impl, OUT_OF_MEMORY, needs)
        runners = []
    together = not available or state_bytes * len(runners) < SHARED_MEMORY_SHARE * available
    if together:
        live = []
        for r in runners:
            echo(f"  {r.impl}: compiling")
            if _guarded(r, done, needs, lambda r=r: (_torch_fits(r, runners), r.setup())):
                live.append(r)
        rr = RoundRobin(point.budget)
        live = [r for r in live if _guarded(r, done, needs, lambda r=r: rr.warm(r.impl, r))]
        echo(f"  timing {', '.join(r.impl for r in live)} round-robin")
        for _ in range(point.budget.rounds):
            live = [r for r in live if _guarded(r, done, needs, lambda r=r: rr.one_round(r.impl, r))]
        for r in live:
            timing = rr.timing(r.impl, r.steps_per_unit)
            _guarded(r, done, needs, lambda r=r, t=timing: done.__setitem__(r.impl, r.result(t)))
            r.close()
    else:
        for r in runners:
            echo(f"  {r.impl}: compiling and timing alone (large model)")
            if _guarded(r, done, needs, lambda r=r: (_torch_fits(r, runners), r.setup())):
                _guarded(r, done, needs,
                         lambda r=r: done.__setitem__(r.impl, r.result(time_alone(r, point.budget))))
                r.close()
    return [done.get(impl) or missing(impl, UNAVAILABLE, "not measured") for impl in IMPLS]
