"""Whole ``pipeline`` processes, timed from outside as a user meets them.

* ``first-step`` points: ``pipeline train`` to its first training step, read from the run's
  own metrics table (``wall_s`` of the first train row: from the start of training, imports
  and data loading done, to the first step's metrics), with a cold persistent compilation
  cache (a new folder each process) against a warm one (the first cold process's folder).
  Cold and warm processes alternate; ``budget.rounds`` of each, the median kept.
* ``sweep-run`` points: one population as a whole ``pipeline sweep --vmap``, as
  ``pipeline sweep --no-vmap`` (each with a fresh compilation cache, so each pays its
  compilation once) and as one ``pipeline train`` process per trial (sharing one cache, as
  ``pipeline train`` does by default). The figure is the wall time of each way; steps/s
  counts member-steps (trials x steps over it). Every way's final test accuracy is compared
  with the vmapped sweep's, trial by trial; the largest difference is in the row's detail.

Children get ``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so they share a GPU with this process, and
``PIPELINE_DISTRIBUTED=off``, so they never try to join processes this one may belong to.
A TPU is held by one process at a time: there these points are ``unavailable``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.bench.measure import FAILED, UNAVAILABLE, Measurement, missing
from pipeline.bench.points import Point
from pipeline.bench.results import impls_of
from pipeline.bench.schedule import BUDGET_SPENT, SKIPPED, one_line
from pipeline.bench.sweep_points import member_overrides
from pipeline.bench.timing import Deadline, past
from pipeline.bench.workload import Workload

PROCESS_TIMEOUT_S = 900  # one process; past the deadline a process still gets PROCESS_GRACE_S
PROCESS_GRACE_S = 120


class ProcessFailed(RuntimeError):
    """A ``pipeline`` child process that exited non-zero (its last line of stderr says why)."""


def child_env(work: Path) -> dict[str, str]:
    package_parent = str(Path(__file__).resolve().parents[2])  # `python -m pipeline` without an install too
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else ""),
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PIPELINE_DISTRIBUTED": "off",
            "PIPELINE_RUNS": str(work / "runs"), "PIPELINE_SWEEPS": str(work / "sweeps")}


def run_pipeline(args: list[str], work: Path, deadline: Deadline | None) -> tuple[float, str]:
    """Wall seconds and stdout of ``python -m pipeline ARGS`` (in ``work``); ProcessFailed if it fails."""
    timeout = PROCESS_TIMEOUT_S if deadline is None else max(PROCESS_GRACE_S, deadline.left() + PROCESS_GRACE_S)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=work, env=child_env(work),
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ProcessFailed(f"`pipeline {args[0]}` exited {proc.returncode}: {lines[-1] if lines else '(no output)'}")
    return wall, proc.stdout


def train_args(point: Point, workload: Workload) -> list[str]:
    """``pipeline train`` arguments for the point's model, data and batch, on the benchmark's store."""
    cfg = workload.cfg
    return ["train", "digits_mlp", f"data={cfg.data.name}", f"batch_size={cfg.batch_size}",
            f"precision={cfg.precision}", *point.model_overrides, "--no-progress",
            "--store", str(workload.store.root)]


def _no_second_process(impls: tuple[str, ...]) -> list[Measurement] | None:
    if jax.default_backend() == "tpu":
        return [missing(i, UNAVAILABLE, "a second process cannot open the TPU this one holds") for i in impls]
    return None


def measure_first_step(point: Point, workload: Workload, peers: tuple[str, ...], echo: Callable[[str], None],
                       deadline: Deadline | None = None) -> list[Measurement]:
    impls = impls_of(point.family)
    refused = _no_second_process(impls)
    if refused:
        return refused
    samples: dict[str, list[float]] = {i: [] for i in impls if i in peers}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        work = Path(tmp)
        args = [*train_args(point, workload), "steps=4", "eval_every=4", "steps_per_call=1", "plot=false"]

        def first_step(cache: Path, run: str) -> float:
            run_pipeline([*args, "--compile-cache", str(cache), "--run-dir", str(work / run)], work, deadline)
            table = pq.read_table(work / run / "metrics.parquet", columns=["split", "wall_s"])
            return pc.min(table.filter(pc.equal(table["split"], "train"))["wall_s"]).as_py()

        for i in range(point.budget.rounds):
            if i and past(deadline):
                break
            echo(f"  processes, round {i + 1}: cold and warm compilation cache")
            for impl, cache in (("cold_cache", work / f"cache-{i}"), ("warm_cache", work / "cache-0")):
                if impl not in samples or impl in errors:
                    continue
                if impl == "warm_cache" and not (work / "cache-0").is_dir():
                    errors[impl] = "no warm cache: the first cold process did not run"
                    continue
                try:
                    samples[impl].append(first_step(cache, f"{impl}-{i}"))
                except (ProcessFailed, subprocess.SubprocessError, OSError) as exc:
                    errors[impl] = one_line(exc)
    out = []
    for impl in impls:
        if impl not in samples:
            out.append(missing(impl, SKIPPED, "not in --peers"))
        elif samples[impl]:
            out.append(Measurement(impl, wall_s=statistics.median(samples[impl]),
                                   detail=f"seconds to the first step's metrics, median of {len(samples[impl])} "
                                          "processes"))
        else:
            out.append(missing(impl, FAILED, errors.get(impl) or BUDGET_SPENT))
    return out


def _accuracies(path: Path) -> dict[tuple[str, ...], float]:
    """Final test accuracy by trial overrides, from a sweep's trials.parquet."""
    table = pq.read_table(path)
    if "overrides" not in table.column_names or "final_test_accuracy" not in table.column_names:
        return {}
    return {tuple(o): a for o, a in zip(table["overrides"].to_pylist(), table["final_test_accuracy"].to_pylist())}


def measure_sweep_run(point: Point, workload: Workload, peers: tuple[str, ...], echo: Callable[[str], None],
                      deadline: Deadline | None = None) -> list[Measurement]:
    impls = impls_of(point.family)
    refused = _no_second_process(impls)
    if refused:
        return refused
    trials = member_overrides(point.population)
    seeds = len({o[1] for o in trials})
    rates = len(trials) // seeds
    space = [f"optimizer.learning_rate=logspace(1e-4,1e-1,{rates})"] + ([f"seed=range({seeds})"] if seeds > 1 else [])
    base = train_args(point, workload)[2:]  # without "train digits_mlp"
    steps = workload.cfg.steps
    done: dict[str, Measurement] = {}
    accuracy: dict[str, dict[tuple[str, ...], float]] = {}
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        work = Path(tmp)
        for impl in impls:
            if impl not in peers:
                done[impl] = missing(impl, SKIPPED, "not in --peers")
                continue
            if past(deadline):
                done[impl] = missing(impl, SKIPPED, BUDGET_SPENT)
                continue
            echo(f"  {impl}: {len(trials)} trials of {steps} steps")
            try:
                if impl in ("sweep_vmap", "sweep_no_vmap"):
                    folder = work / impl
                    flag = "--vmap" if impl == "sweep_vmap" else "--no-vmap"
                    wall, _ = run_pipeline(["sweep", "digits_mlp", *base, *space, flag, "--json",
                                            "--sweep-dir", str(folder), "--compile-cache", str(work / f"cache-{impl}")],
                                           work, deadline)
                    accuracy[impl] = _accuracies(folder / "trials.parquet")
                else:
                    # The trials exactly as the sweep spelt them, when a sweep ran; else the same values.
                    chosen = next((list(a) for a in accuracy.values() if a), None) or [tuple(t) for t in trials]
                    wall, accuracy[impl] = 0.0, {}
                    for i, overrides in enumerate(chosen):
                        if i and past(deadline):
                            raise TimeoutError(f"{BUDGET_SPENT} after {i} of {len(chosen)} processes")
                        t, out = run_pipeline(["train", "digits_mlp", *base, *overrides, "--json",
                                               "--run-dir", str(work / "runs" / f"trial-{i:03d}"),
                                               "--compile-cache", str(work / "cache-processes")], work, deadline)
                        wall += t
                        metrics = json.loads(out.strip().splitlines()[-1]).get("metrics", {})
                        if "test/accuracy" in metrics:
                            accuracy[impl][tuple(overrides)] = metrics["test/accuracy"]
            except (ProcessFailed, TimeoutError, subprocess.SubprocessError, OSError, ValueError) as exc:
                done[impl] = missing(impl, FAILED, one_line(exc))
                continue
            done[impl] = Measurement(impl, wall_s=wall, steps_per_call=None,
                                     detail=f"{len(trials)} trials x {steps} steps, whole processes")
            done[impl].extra = {"member_steps": len(trials) * steps}
    reference = accuracy.get("sweep_vmap") or {}
    for impl, acc in accuracy.items():
        shared = [k for k in acc if k in reference]
        if impl != "sweep_vmap" and shared and done[impl].ok:
            worst = max(abs(acc[k] - reference[k]) for k in shared)
            done[impl].detail += f"; final test accuracy within {worst:.2g} of sweep_vmap's"
    return [done[impl] for impl in impls]
