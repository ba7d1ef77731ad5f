"""The training loop: K compiled steps per dispatch, evaluation, records of the run.

The host never waits on the call it just dispatched: it reads back the metrics of the
previous call while the next one runs, logs them, and checks them for a non-finite loss.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pipeline.config import Config, ConfigError, to_dict
from pipeline.data import DataError, DatasetInfo, Store, ensure_dataset
from pipeline.data.device import DeviceSplit, EvalBatches, data_mesh, eval_batches, to_device
from pipeline.errors import PipelineError
from pipeline.track.metrics import MetricsTable
from pipeline.track.plot import plot_run
from pipeline.track.progress import Progress
from pipeline.track.run_dir import write_json
from pipeline.train.state import StepSpec, TrainState, create_state
from pipeline.train.step import eval_sums, train_many

AUTO_STEPS_PER_CALL = 100


class NonFiniteLoss(PipelineError):
    pass


@dataclass
class Prepared:
    """Everything a run needs before its first step, on the device."""

    cfg: Config
    info: DatasetInfo
    spec: StepSpec
    state: TrainState
    train: DeviceSplit
    test: EvalBatches
    total_steps: int
    steps_per_call: int


def total_steps(cfg: Config, train_rows: int) -> int:
    if cfg.batch_size > train_rows:
        raise ConfigError(f"bad value for 'batch_size': {cfg.batch_size} is more than the {train_rows} training rows")
    return cfg.epochs * (train_rows // cfg.batch_size) if cfg.epochs else cfg.steps


def choose_steps_per_call(cfg: Config, steps: int) -> int:
    """The largest K <= target that divides both the run and the evaluation interval.

    A fixed K means one compiled program for the whole run; dividing the evaluation
    interval means evaluations land exactly on their steps.
    """
    target = cfg.steps_per_call or AUTO_STEPS_PER_CALL
    common = math.gcd(steps, min(cfg.eval_every, steps))
    return max(k for k in range(1, min(target, common) + 1) if common % k == 0)


def check_compatible(cfg: Config, info: DatasetInfo) -> None:
    if info.task == "language_modeling" and cfg.model.name != "transformer":
        raise ConfigError(f"dataset '{info.name}' holds token sequences; use model.name=transformer")


def prepare(cfg: Config, store: Store) -> Prepared:
    info = ensure_dataset(store, cfg.data.name)
    check_compatible(cfg, info)
    mesh = data_mesh()
    train_split = store.read(cfg.data.name, "train")
    if "test" not in info.rows:
        raise DataError(f"dataset '{cfg.data.name}' has no test split")
    test_split = store.read(cfg.data.name, "test")
    steps = total_steps(cfg, len(train_split))
    spec, state = create_state(cfg, info, steps)
    return Prepared(cfg, info, spec, state, to_device(train_split, mesh),
                    eval_batches(test_split, cfg.eval_batch_size, mesh), steps,
                    choose_steps_per_call(cfg, steps))


def compiled(spec: StepSpec, steps_per_call: int):
    """The two programs of a run: K train steps (state donated) and a whole-split evaluation."""
    run = jax.jit(functools.partial(train_many, spec, steps_per_call), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_sums, spec))
    return run, evaluate


def finalize_eval(prep: Prepared, sums: dict) -> dict[str, float]:
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    return {k: float(v) for k, v in prep.spec.objective.finalize(host).items()}


def train(cfg: Config, experiment: str, run_dir: Path, store: Store, show_progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` and record the run in ``run_dir``. Returns the summary object."""
    started = time.time()
    prep = prepare(cfg, store)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {"experiment": experiment, "config": to_dict(cfg)})
    metrics = MetricsTable(run_dir / "metrics.parquet")
    run, evaluate = compiled(prep.spec, prep.steps_per_call)
    state, k = prep.state, prep.steps_per_call
    last_test: dict[str, float] = {}
    pending: list[tuple[str, int, Any]] = []
    last_flush = time.time()

    def consume(items: list[tuple[str, int, Any]], progress: Progress) -> None:
        nonlocal last_test
        for kind, step, values in items:
            wall = time.time() - started
            if kind == "train":
                host = {name: np.asarray(v) for name, v in jax.device_get(values).items()}
                steps = np.arange(step - k + 1, step + 1)
                bad = ~np.isfinite(host["loss"])
                if bad.any():
                    good = int(np.argmax(bad))
                    first = int(steps[good])
                    metrics.add(steps[:good], "train", {n: v[:good] for n, v in host.items()}, wall)
                    metrics.flush()
                    raise NonFiniteLoss(
                        f"non-finite training loss at step {first}; the run stopped "
                        f"(metrics up to step {first - 1} are in {run_dir / 'metrics.parquet'})"
                    )
                metrics.add(steps, "train", host, wall)
                progress.update(step, float(host["loss"][-1]))
            else:
                last_test = finalize_eval(prep, values)
                metrics.add(step, "test", last_test, wall)
                progress.note(step, last_test)

    with Progress(prep.total_steps, enabled=show_progress) as progress:
        for call in range(prep.total_steps // k):
            state, step_metrics = run(state, prep.train.x, prep.train.y)
            step = (call + 1) * k
            current = [("train", step, step_metrics)]
            if step % cfg.eval_every == 0 or step == prep.total_steps:
                current.append(("test", step, evaluate(state, prep.test.x, prep.test.y, prep.test.mask)))
            consume(pending, progress)  # the previous call's results, while this one runs
            pending = current
            if time.time() - last_flush > 5.0:
                metrics.flush()
                last_flush = time.time()
        consume(pending, progress)
    metrics.flush()
    summary = {
        "run_dir": str(run_dir),
        "experiment": experiment,
        "data": cfg.data.name,
        "steps": prep.total_steps,
        "wall_s": round(time.time() - started, 3),
        "metrics": {f"test/{name}": value for name, value in last_test.items()},
    }
    write_json(run_dir / "summary.json", summary)
    plot_run(run_dir / "metrics.parquet", run_dir / "curves.png", title=f"{experiment} on {cfg.data.name}")
    return summary
