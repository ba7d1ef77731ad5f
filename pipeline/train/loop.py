"""The training loop: K compiled steps per dispatch, evaluation, checkpoints, records.

The host never waits on the call it just dispatched: between evaluations it reads back
the metrics of the previous call while the next one runs. At evaluations and
checkpoints it catches up, decides (best so far, early stopping) and saves.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.config import Config, ConfigError, to_dict
from pipeline.data import DataError, DatasetInfo, Split, Store, ensure_dataset
from pipeline.data.budget import fits_on_device
from pipeline.data.device import (
    DeviceSplit,
    EvalBatches,
    data_mesh,
    eval_batches,
    place_indices,
    replicated,
    to_device,
)
from pipeline.data.order import EpochOrder
from pipeline.data.sources import split_off_test
from pipeline.data.stream import StreamingReader
from pipeline.errors import PipelineError
from pipeline.objectives import best_metric
from pipeline.signals import sigint_flag
from pipeline.track.background import plot_later
from pipeline.track.metrics import MetricsTable
from pipeline.track.profile import Profiler
from pipeline.track.progress import Progress
from pipeline.track.run_dir import write_json
from pipeline.track.trackers import trackers
from pipeline.train.calls import target_steps_per_call
from pipeline.train.checkpoint import Checkpointer, host_copy
from pipeline.train.checks import check_dataset, check_outputs
from pipeline.train.evaluation import Bookkeeping, finalize
from pipeline.train.hooks import Hook, Hooks, RunInfo
from pipeline.train.record import open_run_dir
from pipeline.train.state import StepSpec, TrainState, create_state
from pipeline.train.step import eval_sums, train_many, train_scan

AUTO_STEPS_PER_CALL = 100
FLUSH_SECONDS = 5.0


class NonFiniteLoss(PipelineError):
    pass


class Interrupted(PipelineError):
    """Ctrl-C: the run saved a checkpoint and can be resumed."""

    exit_code = 130


@dataclass
class Prepared:
    """Everything a run needs before its first step, on the device."""

    cfg: Config
    info: DatasetInfo
    spec: StepSpec
    state: TrainState
    train: DeviceSplit | None  # the device-resident path, or
    reader: StreamingReader | None  # the streaming path (a training split over data.max_device_bytes)
    evals: dict[str, EvalBatches]  # "val" (when there is one) and "test"
    total_steps: int
    steps_per_call: int

    @property
    def steps_per_epoch(self) -> int:
        return self.reader.steps_per_epoch if self.reader else self.train.rows // self.cfg.batch_size

    @property
    def select_split(self) -> str:
        """The split that picks the best checkpoint and drives early stopping."""
        return "val" if "val" in self.evals else "test"


def total_steps(cfg: Config, train_rows: int) -> int:
    if cfg.batch_size > train_rows:
        raise ConfigError(f"bad value for 'batch_size': {cfg.batch_size} is more than the {train_rows} training rows")
    return cfg.epochs * (train_rows // cfg.batch_size) if cfg.epochs else cfg.steps


def streaming(cfg: Config, info: DatasetInfo) -> bool:
    """A training split over the device budget is streamed from disk instead of loaded whole."""
    return not fits_on_device(info, cfg.data.max_device_bytes)


def choose_steps_per_call(cfg: Config, steps: int, target: int = AUTO_STEPS_PER_CALL) -> int:
    """The largest K <= target (``steps_per_call`` when set) dividing the run, the evaluation and
    the checkpoint intervals.

    A fixed K means one compiled program for the whole run, and evaluations and step-counted
    checkpoints land exactly on their steps (time-based checkpoints take any call boundary).
    """
    target = cfg.steps_per_call or target
    common = math.gcd(steps, min(cfg.eval_every, steps), min(cfg.checkpoint_every or steps, steps))
    return max(k for k in range(1, min(target, common) + 1) if common % k == 0)


def read_splits(cfg: Config, store: Store, info: DatasetInfo) -> dict[str, Split]:
    """train (unless streamed), test and (stored or carved from train) val, as numpy arrays."""
    names = ("test",) if streaming(cfg, info) else ("train", "test")
    splits = {name: store.read(cfg.data.name, name) for name in names if name in info.rows}
    if "test" not in splits:
        raise DataError(f"dataset '{cfg.data.name}' has no test split")
    if "validation" in info.rows:
        splits["val"] = store.read(cfg.data.name, "validation")
    elif cfg.data.validation_fraction > 0 and streaming(cfg, info):
        raise ConfigError(f"'data.validation_fraction' cannot carve a split from the streamed dataset "
                          f"'{cfg.data.name}'; import it with a validation split")
    elif cfg.data.validation_fraction > 0:
        splits["train"], splits["val"] = split_off_test(splits["train"], cfg.data.validation_fraction,
                                                        cfg.resolved_data_seed)
    return splits


def prepare(cfg: Config, store: Store) -> Prepared:
    info = ensure_dataset(store, cfg.data.name)
    check_dataset(cfg, info)  # a model or objective that cannot take the dataset fails here, naming it
    splits = read_splits(cfg, store, info)
    mesh = data_mesh()
    train_split, reader = None, None
    if "train" in splits:
        train_split = to_device(splits["train"], mesh)
        steps = total_steps(cfg, train_split.rows)
    else:
        reader = StreamingReader(store, cfg.data.name, "train", cfg.batch_size, cfg.resolved_data_seed,
                                 cfg.data.shuffle_buffer, cfg.data.prefetch, jax.process_index(),
                                 jax.process_count(), mesh=mesh)
        steps = cfg.epochs * reader.steps_per_epoch if cfg.epochs else cfg.steps
    spec, state = create_state(cfg, info, steps)
    check_outputs(cfg, spec, state, info)  # traced abstractly: a wrong output shape fails before compiling
    # Committed to the mesh like every later state, so the step compiles once, not twice.
    state = jax.device_put(state, replicated(mesh))
    evals = {name: eval_batches(splits[name], cfg.eval_batch_size, mesh) for name in ("val", "test") if name in splits}
    target = AUTO_STEPS_PER_CALL
    if not cfg.steps_per_call and reader is None:  # streamed batches are stacked K at a time: keep K modest
        params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
        target = target_steps_per_call(params, cfg.batch_size)
    return Prepared(cfg, info, spec, state, train_split, reader, evals, steps,
                    choose_steps_per_call(cfg, steps, target))


def compiled(spec: StepSpec, stream: bool = False):
    """The two programs of a run: K train steps (state donated) and a whole-split evaluation.

    The device-resident program gathers its batches by the row indices it is given; the
    streaming one scans K stacked batches. K is the leading axis of either.
    """
    run = jax.jit(functools.partial(train_scan if stream else train_many, spec), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_sums, spec))
    return run, evaluate


class Batches:
    """What one compiled call trains on: the resident split and K steps' row indices, or
    K batches from the stream. Call ``args`` once per call, in step order."""

    def __init__(self, prep: Prepared, start_step: int):
        self.prep, self.step = prep, start_step
        self._stream = prep.reader.iterate(start_step) if prep.reader else None
        if self._stream is None:
            self._order = EpochOrder(prep.train.rows, prep.cfg.batch_size, prep.cfg.resolved_data_seed)
            self._mesh = data_mesh()

    def args(self) -> tuple:
        k = self.prep.steps_per_call
        first, self.step = self.step, self.step + k
        if self._stream is None:
            return self.prep.train.x, self.prep.train.y, place_indices(self._order.indices(first, k), self._mesh)
        batches = [next(self._stream) for _ in range(k)]
        return tuple(jnp.stack(parts) for parts in zip(*batches, strict=True))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self.prep.reader.close()


class _Run:
    """One training run's moving parts; ``train()`` below is the whole story."""

    def __init__(self, prep: Prepared, run_dir: Path, show_progress: bool, hooks: Hooks):
        self.prep, self.run_dir, self.hooks = prep, run_dir, hooks
        self.k = prep.steps_per_call
        self.metrics = MetricsTable(run_dir / "metrics.parquet")
        self.checkpointer = Checkpointer(run_dir, prep.cfg.checkpoint_keep)
        self.run, self.evaluate = compiled(prep.spec, stream=prep.reader is not None)
        self.book = Bookkeeping()
        self.started = time.time()
        self.last_flush = time.time()
        self.progress = Progress(prep.total_steps, enabled=show_progress)
        self.best_metric = best_metric(prep.cfg, prep.spec.objective)
        self.last_save = time.time()
        self.held_best: tuple[int, Any, dict] | None = None  # a best state not yet written (step, host state, meta)

    def restore(self, state: TrainState) -> TrainState:
        restored = self.checkpointer.restore_latest(state)
        if restored is None:
            self.metrics.truncate_after(0)  # an earlier attempt that never checkpointed: start over
            return state
        host_state, meta = restored
        self.book = Bookkeeping.from_meta(meta)
        self.metrics.truncate_after(self.book.step)
        return jax.device_put(host_state, jax.tree.map(lambda a: a.sharding, state))

    def wall(self) -> float:
        return self.book.wall_s + time.time() - self.started

    def log_train(self, last_step: int, values: dict) -> None:
        host = {name: np.asarray(v) for name, v in jax.device_get(values).items()}
        steps = np.arange(last_step - len(host["loss"]) + 1, last_step + 1)
        bad = ~np.isfinite(host["loss"])
        if bad.any():
            good = int(np.argmax(bad))
            self.metrics.add(steps[:good], "train", {n: v[:good] for n, v in host.items()}, self.wall())
            self.metrics.flush()
            raise NonFiniteLoss(f"non-finite training loss at step {int(steps[good])}; the run stopped "
                                f"(metrics up to step {int(steps[good]) - 1} are in {self.metrics.path})")
        self.metrics.add(steps, "train", host, self.wall())
        self.hooks.after_call(steps, host)
        self.progress.update(last_step, float(host["loss"][-1]))

    def log_eval(self, step: int, sums: dict[str, Any]) -> bool:
        """Record the evaluations of ``step``; True when the selection split improved."""
        improved = False
        for split, split_sums in sums.items():
            values = finalize(self.prep.spec.objective, split_sums)
            self.book.last_eval[split] = values
            self.metrics.add(step, split, values, self.wall())
            if split == self.prep.select_split:
                if self.best_metric not in values:
                    raise ConfigError(f"objective '{self.prep.spec.objective.name}' returned no '{self.best_metric}' "
                                      f"metric (it returned {', '.join(values)})")
                higher = self.prep.spec.objective.higher_is_better[self.best_metric]
                improved = self.book.observe(step, values[self.best_metric], higher)
        self.hooks.on_eval(step, {split: self.book.last_eval[split] for split in sums})
        self.progress.note(step, self.book.last_eval.get("test", {}))
        return improved

    def latest_due(self, step: int) -> bool:
        """The checkpoint policy: every ``checkpoint_every`` steps when set, else every ``checkpoint_minutes``."""
        cfg = self.prep.cfg
        if cfg.checkpoint_every:
            return step % cfg.checkpoint_every == 0
        return time.time() - self.last_save >= 60.0 * cfg.checkpoint_minutes

    def meta(self, step: int) -> dict:
        self.book.step = step
        meta = self.book.to_meta()
        meta["wall_s"] = self.wall()
        if self.prep.reader is not None:
            meta["reader"] = self.prep.reader.state(step)
        else:
            epoch, offset = divmod(step, self.prep.steps_per_epoch)
            meta["reader"] = {"epoch": epoch, "offset": offset, "seed": self.prep.cfg.resolved_data_seed}
        return meta

    def hold_best(self, step: int, state: TrainState) -> None:
        """A new best between latest checkpoints: kept on the host, written with the next latest one.

        Written before that latest one, so the best checkpoint on disk always agrees with the
        bookkeeping a resume starts from.
        """
        self.held_best = (step, host_copy(state), self.meta(step))

    def save(self, step: int, state: TrainState, best: bool = False) -> None:
        self.metrics.flush()
        if self.held_best is not None and not best:
            self.checkpointer.save_best(*self.held_best)
        self.held_best = None
        self.checkpointer.save(step, state, self.meta(step), best=best)
        self.last_save = time.time()
        self.hooks.on_checkpoint(step, best)

    def evaluate_all(self, state: TrainState) -> dict[str, Any]:
        return {name: self.evaluate(state, b.x, b.y, b.mask) for name, b in self.prep.evals.items()}


def train(cfg: Config, experiment: str, run_dir: Path, store: Store, show_progress: bool = True,
          experiment_file: str = "", hooks: list[Hook] | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming it when it holds an earlier run of this config.

    ``hooks`` (and the trackers ``cfg.log`` names) are called on the host between compiled
    calls. Returns the summary object (also written to ``run_dir/summary.json``).
    """
    all_hooks = Hooks(trackers(cfg.log) + list(hooks or []))  # a missing tracker extra fails before any work
    profiler = Profiler(cfg.profile, run_dir / "profile")
    prep = prepare(cfg, store)
    resuming = open_run_dir(run_dir, experiment, cfg, prep.info, experiment_file)
    r = _Run(prep, run_dir, show_progress, all_hooks)
    state = r.restore(prep.state) if resuming else prep.state
    if not resuming:
        r.metrics.truncate_after(0)
    k, total = r.k, prep.total_steps
    pending: list[tuple[int, Any]] = []  # (last step, device metrics) of the previous call
    batches = Batches(prep, r.book.step)
    try:
        all_hooks.on_start(RunInfo(run_dir, experiment, to_dict(cfg), total, r.book.step))
        with sigint_flag() as interrupted, r.progress:
            step = r.book.step
            r.progress.update(step, float("nan"))
            while step < total and not r.book.stopped_early:
                with profiler.call(step, k):
                    state, step_metrics = r.run(state, *batches.args())
                step += k
                for item in pending:  # the previous call's results, while this one runs
                    r.log_train(*item)
                pending = [(step, step_metrics)]
                eval_due = step % cfg.eval_every == 0 or step == total
                save_due = step == total or r.latest_due(step)
                if eval_due or save_due or interrupted["set"]:
                    for item in pending:
                        r.log_train(*item)
                    pending = []
                    improved = False
                    if eval_due:
                        improved = r.log_eval(step, r.evaluate_all(state))
                        if cfg.patience and r.book.evals_since_best >= cfg.patience:
                            r.book.stopped_early = True
                    if save_due or interrupted["set"] or r.book.stopped_early:
                        r.save(step, state, best=improved)
                    elif improved:
                        r.hold_best(step, state)
                    if interrupted["set"]:
                        r.checkpointer.wait()
                        raise Interrupted(f"interrupted at step {step}; a checkpoint is saved; resume with "
                                          f"--run-dir {run_dir} --resume")
                elif time.time() - r.last_flush > FLUSH_SECONDS:
                    r.metrics.flush()
                    r.last_flush = time.time()
            for item in pending:
                r.log_train(*item)
    finally:
        profiler.stop()
        batches.close()
        r.checkpointer.wait()
        r.checkpointer.close()
        r.metrics.flush()
        if sys.exc_info()[0] is not None:  # failed or interrupted: the hooks still close (files, runs)
            all_hooks.close()
    summary = {
        "run_dir": str(run_dir),
        "experiment": experiment,
        "data": cfg.data.name,
        "steps": r.book.step,
        "wall_s": round(r.wall(), 3),
        "metrics": {f"{split}/{name}": value for split in ("test", "val")
                    for name, value in r.book.last_eval.get(split, {}).items()},
        "best": {"split": prep.select_split, "metric": r.best_metric, "value": r.book.best_value,
                 "step": r.book.best_step},
        "stopped_early": r.book.stopped_early,
    }
    write_json(run_dir / "summary.json", summary)
    try:
        all_hooks.on_end(summary)
    finally:
        all_hooks.close()
    if cfg.plot:
        plot_later(run_dir)
    return summary
