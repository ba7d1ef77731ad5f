"""``pipeline train``: a dataset and a model made ready on the device, then trained by the engine.

``prepare`` does everything before the first step (the mesh, data on the devices or a stream,
the train state placed by the FSDP rule, the checks, K steps per call); ``train`` runs it as
the engine's population of one (``engine.py``) and writes the run folder's summary.

Several processes (``pipeline.distributed``) run the same ``train``: every process steps its
devices' share of the one program; only process 0 writes the run folder (config, metrics,
summary, plots, trackers, hooks), and every decision that could differ between processes
(resume, a checkpoint by the clock, a Ctrl-C) is process 0's.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from pipeline import distributed
from pipeline.config import Config, ConfigError, to_dict
from pipeline.data import DataError, DatasetInfo, Split, Store, ensure_dataset
from pipeline.data.budget import fits_on_device
from pipeline.data.device import (
    DeviceSplit,
    EvalBatches,
    batch_sharding,
    data_mesh,
    eval_batches,
    process_rows,
    read_rows,
    replicated,
    to_device,
    use_mesh,
)
from pipeline.data.sources import split_off_test
from pipeline.data.stream import StreamingReader
from pipeline.objectives import best_metric
from pipeline.signals import sigint_flag
from pipeline.track.background import plot_later
from pipeline.track.metrics import MetricsTable
from pipeline.track.profile import Profiler
from pipeline.track.progress import Progress
from pipeline.track.run_dir import write_json
from pipeline.track.trackers import trackers
from pipeline.train.steps_per_call import scan_unroll, target_steps_per_call
from pipeline.train.checkpoint import Checkpointer
from pipeline.train.checks import check_dataset, check_outputs
from pipeline.train.engine import Engine, Interrupted, NonFiniteLoss, Policy, Selection, books_from_meta
from pipeline.train.evaluation import Bookkeeping
from pipeline.hooks import Hook, Hooks, RunInfo
from pipeline.train.population import Feed, ResidentFeed, SoloPopulation, StepShardings, StreamFeed, solo_programs
from pipeline.train.run_folder import open_run_dir
from pipeline.train.state import StepSpec, TrainState, create_state, place_state, state_shardings

AUTO_STEPS_PER_CALL = 100
__all__ = ["Interrupted", "NonFiniteLoss", "prepare", "train"]


@dataclass
class Prepared:
    """Everything a run needs before its first step, on the device."""

    cfg: Config
    store: Store
    info: DatasetInfo
    spec: StepSpec
    state: TrainState
    train: DeviceSplit | None  # the device-resident path, or
    reader: StreamingReader | None  # the streaming path (a training split over data.max_device_bytes)
    evals: dict[str, EvalBatches]  # "val" (when there is one) and "test"
    total_steps: int
    steps_per_call: int
    mesh: Mesh | None = None  # data x fsdp (``mesh.data``, ``mesh.fsdp``)
    shardings: StepShardings | None = None  # the run's programs' explicit in and out shardings

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


def read_splits(cfg: Config, store: Store, info: DatasetInfo, mesh: Mesh | None = None) -> dict[str, Split]:
    """train (unless streamed), test and (stored or carved from train) val, as numpy arrays.

    Several processes (``mesh`` given): "train" is this process's block of rows (``process_rows``),
    read from the row groups that hold it; with ``data.validation_fraction`` every process reads
    the whole split to carve it (the carve draws from every row) and keeps its block.
    """
    stream = streaming(cfg, info)
    several = mesh is not None and jax.process_count() > 1
    carve = "validation" not in info.rows and cfg.data.validation_fraction > 0
    own_rows = several and not stream and not carve
    names = ("test",) if stream or own_rows else ("train", "test")
    splits = {name: store.read(cfg.data.name, name) for name in names if name in info.rows}
    if "test" not in splits:
        raise DataError(f"dataset '{cfg.data.name}' has no test split")
    if "validation" in info.rows:
        splits["val"] = store.read(cfg.data.name, "validation")
    elif cfg.data.validation_fraction > 0 and stream:
        raise ConfigError(f"'data.validation_fraction' cannot carve a split from the streamed dataset "
                          f"'{cfg.data.name}'; import it with a validation split")
    elif cfg.data.validation_fraction > 0:
        splits["train"], splits["val"] = split_off_test(splits["train"], cfg.data.validation_fraction,
                                                        cfg.resolved_data_seed)
    if own_rows:  # this process's rows, from its own row groups
        start, stop, _ = process_rows(info.rows["train"], mesh)
        splits["train"] = read_rows(store, cfg.data.name, "train", start, stop)
    elif several and "train" in splits:  # carved from the whole split: keep this process's rows of it
        start, stop, _ = process_rows(len(splits["train"]), mesh)
        splits["train"] = Split(splits["train"].x[start:stop], splits["train"].y[start:stop])
    return splits


def train_rows(cfg: Config, info: DatasetInfo) -> int:
    """The training split's rows (after a validation carve), known without reading them."""
    rows = info.rows["train"]
    if "validation" not in info.rows and cfg.data.validation_fraction > 0:
        rows -= max(1, int(round(cfg.data.validation_fraction * rows)))
    return rows


def run_mesh(cfg: Config) -> Mesh:
    """The run's ``data x fsdp`` mesh of every device of every process, made the one in use.

    Several processes: the global batch must split over every device (each process feeds its
    own rows of it), which ``batch_size`` names when it does not.
    """
    from pipeline.sharding import make_mesh

    mesh = use_mesh(make_mesh(cfg.mesh.data, cfg.mesh.fsdp))
    if jax.process_count() > 1 and cfg.batch_size % mesh.devices.size:
        raise ConfigError(f"bad value for 'batch_size': {cfg.batch_size} does not split over the {mesh.devices.size} "
                          f"devices of the {jax.process_count()} processes; use a multiple of {mesh.devices.size}")
    return mesh


def prepare(cfg: Config, store: Store) -> Prepared:
    info = ensure_dataset(store, cfg.data.name)
    check_dataset(cfg, info)  # a model or objective that cannot take the dataset fails here, naming it
    mesh = run_mesh(cfg)
    splits = read_splits(cfg, store, info, mesh)
    train_split, reader = None, None
    if "train" in splits:
        rows = train_rows(cfg, info) if jax.process_count() > 1 else len(splits["train"])
        steps = total_steps(cfg, rows)
        train_split = to_device(splits["train"], mesh, rows)
    else:
        reader = StreamingReader(store, cfg.data.name, "train", cfg.batch_size, cfg.resolved_data_seed,
                                 cfg.data.shuffle_buffer, cfg.data.prefetch, jax.process_index(),
                                 jax.process_count(), mesh=mesh)
        steps = cfg.epochs * reader.steps_per_epoch if cfg.epochs else cfg.steps
    spec, state = create_state(cfg, info, steps)
    check_outputs(cfg, spec, state, info)  # traced abstractly: a wrong output shape fails before compiling
    # Placed like every later state (parameters, optimizer state and EMA by the FSDP rule), so the
    # step compiles once, not twice.
    placement = state_shardings(state, mesh)
    state = place_state(state, placement)
    evals = {name: eval_batches(splits[name], cfg.eval_batch_size, mesh) for name in ("val", "test") if name in splits}
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    spec = replace(spec, unroll=scan_unroll(params, cfg.batch_size, steps))
    target = AUTO_STEPS_PER_CALL
    if not cfg.steps_per_call and reader is None:  # streamed batches are stacked K at a time: keep K modest
        target = target_steps_per_call(params, cfg.batch_size)
    first_eval = next(iter(evals.values()))
    if reader is None:
        call_args = (train_split.x.sharding, train_split.y.sharding, batch_sharding(mesh, cfg.batch_size, axis=1))
    else:
        call_args = (reader.stacked_sharding(),) * 2
    shardings = StepShardings(placement, call_args, (first_eval.x.sharding, first_eval.y.sharding,
                                                     first_eval.mask.sharding), replicated(mesh))
    # K from this host's measured overhead: process 0's, so every process compiles the same program.
    k = distributed.share("steps_per_call", choose_steps_per_call(cfg, steps, target))
    return Prepared(cfg, store, info, spec, state, train_split, reader, evals, steps, k, mesh, shardings)


def compiled(spec: StepSpec, stream: bool = False, shardings: StepShardings | None = None):
    """The two programs of a run: K train steps (state donated) and a whole-split evaluation."""
    programs = solo_programs(spec, 0, stream, shardings)
    return programs.run, programs.evaluate


def run_feed(prep: Prepared, start_step: int, seeds: list[int] | None = None, slots: int = 1,
             own_reader: bool = True) -> Feed:
    """The batches of ``seeds`` (default: the run's data seed) from ``start_step``: row indices into
    the resident split, or batches from the stream (one reader per distinct seed; the prepared
    reader is used, and closed with the feed, when ``own_reader``)."""
    cfg = prep.cfg
    seeds = seeds or [cfg.resolved_data_seed]
    if prep.reader is None:
        return ResidentFeed(seeds, prep.train, cfg.batch_size, slots)

    def open_reader(seed: int) -> StreamingReader:
        if own_reader and seed == prep.reader.seed:
            return prep.reader
        return StreamingReader(prep.store, cfg.data.name, "train", cfg.batch_size, seed, cfg.data.shuffle_buffer,
                               cfg.data.prefetch, jax.process_index(), jax.process_count(),
                               mesh=prep.mesh or data_mesh())

    return StreamFeed(seeds, open_reader, start_step, slots)


class Batches:
    """The arguments of a run's compiled calls, in step order (what the bench's pipeline peer drives)."""

    def __init__(self, prep: Prepared, start_step: int):
        self.prep, self.step = prep, start_step
        self.feed = run_feed(prep, start_step)

    def args(self) -> tuple:
        k = self.prep.steps_per_call
        first, self.step = self.step, self.step + k
        return self.feed.member_args(0, first, k)

    def close(self) -> None:
        self.feed.close()


def policy_of(cfg: Config, total: int, steps_per_call: int, single: bool = True, rungs: tuple[int, ...] = (),
              keep: float = 0.5) -> Policy:
    return Policy(total, steps_per_call, cfg.eval_every, cfg.patience, cfg.checkpoint_every, cfg.checkpoint_minutes,
                  single, rungs, keep)


def selection_of(prep: Prepared) -> Selection:
    metric = best_metric(prep.cfg, prep.spec.objective)
    return Selection(prep.select_split, metric, prep.spec.objective.higher_is_better[metric])


def reader_position(prep: Prepared, feed: Feed) -> Callable[[int], dict]:
    """The checkpoint's record of where the data order stands at a step."""
    if isinstance(feed, StreamFeed):
        return lambda step: {"reader": feed.reader_state(step)}
    cfg = prep.cfg
    return lambda step: {"reader": {"epoch": step // prep.steps_per_epoch, "offset": step % prep.steps_per_epoch,
                                    "seed": cfg.resolved_data_seed}}


class NoMetrics:
    """The metrics writer of a process that records nothing (every process but process 0)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def add(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass


def train(cfg: Config, experiment: str, run_dir: Path, store: Store, show_progress: bool = True,
          experiment_file: str = "", hooks: list[Hook] | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming it when it holds an earlier run of this config.

    The run is the engine's population of one. ``hooks`` (and the trackers ``cfg.log`` names)
    are called on the host between compiled calls. Returns the summary object (also written to
    ``run_dir/summary.json``). Several processes: each calls this with the same ``run_dir``
    (process 0's); only process 0 writes to it (its hooks and trackers run there only), and
    whether to resume is its decision. Every process returns the summary.
    """
    primary = distributed.is_primary()
    all_hooks = Hooks(trackers(cfg.log) + list(hooks or []) if primary else [])  # a missing extra fails first
    profiler = Profiler(cfg.profile if primary else "", run_dir / "profile")
    prep = prepare(cfg, store)
    resuming = distributed.primary_does("resuming", lambda: open_run_dir(run_dir, experiment, cfg, prep.info,
                                                                         experiment_file))
    metrics = MetricsTable(run_dir / "metrics.parquet") if primary else NoMetrics(run_dir / "metrics.parquet")
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint_keep)
    state, book, step, wall = prep.state, Bookkeeping(), 0, 0.0
    restored = checkpointer.restore_latest(prep.state, onto=prep.shardings.state) if resuming else None
    if restored is not None:  # restored straight onto the run's shardings (any mesh it was saved from)
        state, meta = restored
        book = books_from_meta(meta)[0]
        step, wall = int(meta["step"]), float(meta["wall_s"])
        if book.status == "done" and step < prep.total_steps:  # a finished run extended (more steps)
            book.status = "running"
    metrics.truncate_after(step)  # rows an earlier attempt wrote past its last checkpoint
    feed = run_feed(prep, step)
    progress = Progress(prep.total_steps, enabled=show_progress and primary)
    programs = solo_programs(prep.spec, prep.steps_per_call, prep.reader is not None, prep.shardings)
    pop = SoloPopulation(programs, [state], np.ones(1, bool), feed, step)
    try:
        with sigint_flag() as interrupted, progress:
            engine = Engine(pop, [0], {0: book}, policy_of(cfg, prep.total_steps, prep.steps_per_call),
                            selection_of(prep), prep.spec.objective, prep.evals, metrics, checkpointer,
                            {0: all_hooks}, interrupted,
                            "interrupted at step {step}; a checkpoint is saved; resume with "
                            f"--run-dir {run_dir} --resume",
                            step=step, wall_s=wall, live=np.array([book.status in ("pending", "running")]),
                            meta_extra=reader_position(prep, feed), profiler=profiler,
                            on_progress=lambda last, n, loss: progress.update(last, loss),
                            on_evaluated=lambda at, evals: progress.note(at, evals.get("test", {})))
            all_hooks.on_start(RunInfo(run_dir, experiment, to_dict(cfg), prep.total_steps, step))
            progress.update(step, float("nan"))
            engine.execute()
    finally:
        profiler.stop()
        feed.close()
        checkpointer.wait()
        checkpointer.close()
        metrics.flush()
        if sys.exc_info()[0] is not None:  # failed or interrupted: the hooks still close (files, runs)
            all_hooks.close()
    summary = run_summary(run_dir, experiment, cfg.data.name, book, engine.wall(), selection_of(prep))
    if not primary:
        return summary
    write_json(run_dir / "summary.json", summary)
    try:
        all_hooks.on_end(summary)
    finally:
        all_hooks.close()
    if cfg.plot:
        plot_later(run_dir)
    return summary


def run_summary(run_dir: Path, experiment: str, data: str, book: Bookkeeping, wall: float,
                select: Selection) -> dict[str, Any]:
    """``summary.json`` of a run (or of a sweep trial exported as one)."""
    return {
        "run_dir": str(run_dir),
        "experiment": experiment,
        "data": data,
        "steps": book.steps,
        "wall_s": round(wall, 3),
        "metrics": {f"{split}/{name}": value for split in ("test", "val")
                    for name, value in book.last_eval.get(split, {}).items()},
        "best": {"split": select.split, "metric": select.metric, "value": book.best_value, "step": book.best_step},
        "stopped_early": book.stopped_early,
    }
