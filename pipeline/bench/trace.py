"""Trace points: the pipeline's own steps under ``jax.profiler``, for a look inside one step.

After one untraced call (compiled and warm), ``budget.rounds`` calls of K steps run inside
``jax.profiler.trace`` into ``RESULTS/profiles/POINT-RUN_ID/`` (the same trace that
``profile=START:STEPS`` writes for a run): open the folder with TensorBoard's profile
plugin or XProf, or the ``*.trace.json.gz`` file in Perfetto. The row's steps/s are those
of the traced calls (the profiler slows them a little), its ``artifact`` the folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax

from pipeline.bench.measure import Measurement, missing
from pipeline.bench.pipeline_loop import PipelineRunner
from pipeline.bench.points import Point
from pipeline.bench.schedule import BUDGET_SPENT, SKIPPED, close_quietly, failure
from pipeline.bench.timing import Deadline, Timing, past, summarize
from pipeline.bench.workload import Workload


def measure_trace(point: Point, workload: Workload, folder: Path, echo: Callable[[str], None],
                  deadline: Deadline | None = None) -> list[Measurement]:
    if past(deadline):
        return [missing("traced", SKIPPED, BUDGET_SPENT)]
    runner = PipelineRunner(workload, "traced", input_share=False)
    try:
        echo("  traced: compiling")
        runner.setup()
        runner.run(max(point.budget.warmup, 1))
        calls = max(point.budget.rounds, 1)
        echo(f"  traced: {calls} calls of {runner.steps_per_unit} steps under jax.profiler into {folder}")
        per_step = []
        folder.mkdir(parents=True, exist_ok=True)
        with jax.profiler.trace(str(folder)):
            for _ in range(calls):
                start = time.perf_counter()
                with jax.profiler.TraceAnnotation("pipeline-bench-call"):
                    runner.run(1)
                per_step.append((time.perf_counter() - start) / runner.steps_per_unit)
        median, p25, p75, fastest, slowest = summarize(per_step)
        m = runner.result(Timing(median, p25, p75, fastest, slowest, calls * runner.steps_per_unit, calls))
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        if not files:
            raise RuntimeError(f"jax.profiler wrote nothing into {folder}")
        m.artifact = str(folder)
        m.detail = f"{calls} calls of {runner.steps_per_unit} steps traced: {len(files)} files, " \
                   f"{sum(p.stat().st_size for p in files) / 2**20:.1f} MiB"
        return [m]
    except Exception as exc:  # recorded; the suite goes on
        return [failure("traced", exc)]
    finally:
        close_quietly(runner)
