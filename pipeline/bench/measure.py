"""What one implementation measured at one point, and helpers shared by the JAX measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax

from pipeline.bench.timing import Timing

OK = "ok"
NOT_INSTALLED = "not installed"
OUT_OF_MEMORY = "out of memory"
UNAVAILABLE = "unavailable"
FAILED = "failed"


@dataclass
class Measurement:
    impl: str  # pipeline | jax_bare | jax_bare_scan | torch_eager | torch_compile | reader names
    status: str = OK
    detail: str = ""  # why a status is not ok; what a figure means where it needs saying
    compile_s: float | None = None
    timing: Timing | None = None
    steps_per_call: int | None = None
    flops_xla: float | None = None  # per step, from XLA's cost analysis of one compiled step
    mem_peak_bytes: int | None = None  # the device's high-water mark, where the backend reports it
    mem_program_bytes: int | None = None  # arguments + outputs + temporaries of the compiled program
    input_share: float | None = None  # share of step time spent producing the input
    bytes_per_step: float | None = None  # data suite: bytes read per "step" (one batch)
    wall_s: float | None = None  # whole-process measurements: their seconds (time to a first step, a sweep)
    artifact: str | None = None  # what the measurement left to look at: a profiler trace folder
    extra: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK and (self.timing is not None or self.wall_s is not None)


def missing(impl: str, status: str, detail: str = "") -> Measurement:
    return Measurement(impl, status=status, detail=detail)


class Runner:
    """One implementation at one point: ``setup`` builds and compiles, ``run`` is timed.

    ``setup`` fills ``self.m`` (compile time, FLOPs, memory); ``result`` completes it with
    the timing; ``close`` drops device buffers before the next implementation.
    """

    impl = "?"
    steps_per_unit = 1

    def __init__(self) -> None:
        self.m = Measurement(self.impl)

    def setup(self) -> None:
        raise NotImplementedError

    def run(self, units: int) -> None:
        raise NotImplementedError

    def result(self, timing: Timing) -> Measurement:
        self.m.timing = timing
        self.m.steps_per_call = self.steps_per_unit
        return self.m

    def close(self) -> None:
        pass


def xla_flops(compiled) -> float | None:
    """FLOPs of a compiled program from XLA's cost analysis (None where the backend has none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if flops > 0 else None


def program_bytes(compiled) -> int | None:
    """Device memory a compiled program needs: its arguments, outputs and temporaries."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
             - stats.alias_size_in_bytes)
    return max(peak, int(total))


class DeviceOutOfMemory(RuntimeError):
    """A compiled program that would not fit in the device's free memory (raised before running it)."""


def check_fits(compiled, what: str) -> None:
    """Raise DeviceOutOfMemory when ``compiled`` needs more new memory than the device has free.

    Its arguments are already allocated; outputs and temporaries are what running it adds.
    Checking before running keeps a too-large point from meeting the kernel's OOM killer on CPU.
    """
    from pipeline.bench.environment import device_free_bytes

    try:
        stats = compiled.memory_analysis()
    except Exception:
        return
    if stats is None:
        return
    needs = stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    free = device_free_bytes()
    if free is not None and needs > free:
        raise DeviceOutOfMemory(f"out of memory: {what} needs {needs / 2**30:.1f} GiB more than its inputs, "
                                f"{free / 2**30:.1f} GiB free")


def device_peak_bytes() -> int | None:
    """The device's allocation high-water mark (GPU and TPU report it; CPU does not)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak is not None else None


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM",
                                   "Failed to allocate", "Can't allocate"))
