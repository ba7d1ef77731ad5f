"""Everything a training session needs before its first step, made ready on the devices.

``prepare`` decides the mesh, reads the splits (the training split onto the devices, or a
streaming reader when it is over the device budget), builds the train state and places it by
the FSDP rule, checks model and objective against the dataset, and fixes K, the steps per
compiled call. A run (``run.py``) and a sweep's group (``pipeline.sweep``) both start here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import numpy as np
from jax.sharding import Mesh

from pipeline import distributed
from pipeline.config import Config, ConfigError
from pipeline.data import DataError, DatasetInfo, Split, Store, ensure_dataset
from pipeline.data.budget import fits_on_device
from pipeline.data.device import DeviceSplit, EvalBatches, eval_batches, process_rows, read_rows, to_device
from pipeline.data.sources import split_off_test
from pipeline.data.stream import StreamingReader
from pipeline.sharding import batch_sharding, make_mesh, replicated
from pipeline.train.checks import check_dataset, check_outputs
from pipeline.train.programs import StepShardings
from pipeline.train.selection import Selection, carves_validation, check_selection, selection
from pipeline.train.state import StepSpec, TrainState, create_state, place_state, state_shardings
from pipeline.train.steps_per_call import AUTO_STEPS_PER_CALL, choose_steps_per_call, scan_unroll, target_steps_per_call


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
    mesh: Mesh  # data x fsdp (``mesh.data``, ``mesh.fsdp``): every placement of the session uses it
    shardings: StepShardings  # the run's programs' explicit in and out shardings

    @property
    def steps_per_epoch(self) -> int:
        return self.reader.steps_per_epoch if self.reader else self.train.rows // self.cfg.batch_size

    @property
    def selection(self) -> Selection:
        """The split and metric that pick the best checkpoint and drive early stopping."""
        return selection(self.cfg, self.info, self.spec.objective)


def total_steps(cfg: Config, train_rows: int) -> int:
    if cfg.batch_size > train_rows:
        raise ConfigError(f"bad value for 'batch_size': {cfg.batch_size} is more than the {train_rows} training rows")
    return cfg.epochs * (train_rows // cfg.batch_size) if cfg.epochs else cfg.steps


def streaming(cfg: Config, info: DatasetInfo) -> bool:
    """A training split over the device budget is streamed from disk instead of loaded whole."""
    return not fits_on_device(info, cfg.data.max_device_bytes)


def read_splits(cfg: Config, store: Store, info: DatasetInfo, mesh: Mesh | None = None) -> dict[str, Split]:
    """train (unless streamed), test and (stored or carved from train) val, as numpy arrays.

    Several processes (``mesh`` given): "train" is this process's block of rows (``process_rows``),
    read from the row groups that hold it; with ``data.validation_fraction`` every process reads
    the whole split to carve it (the carve draws from every row) and keeps its block.

    The carve is seeded by ``data.validation_seed``, a property of the dataset: every trial of a
    sweep, whatever its ``seed`` or ``data_seed``, is judged on the same held-out rows. A streamed
    training split is never carved (``carves_validation``).
    """
    stream = streaming(cfg, info)
    several = mesh is not None and jax.process_count() > 1
    carve = carves_validation(cfg, info)
    own_rows = several and not stream and not carve
    names = ("test",) if stream or own_rows else ("train", "test")
    splits = {name: store.read(cfg.data.name, name) for name in names if name in info.rows}
    if "test" not in splits:
        raise DataError(f"dataset '{cfg.data.name}' has no test split")
    if "validation" in info.rows:
        splits["val"] = store.read(cfg.data.name, "validation")
    elif carve:
        splits["train"], splits["val"] = split_off_test(splits["train"], cfg.data.validation_fraction,
                                                        cfg.data.validation_seed)
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
    if carves_validation(cfg, info):
        rows -= max(1, int(round(cfg.data.validation_fraction * rows)))
    return rows


def run_mesh(cfg: Config) -> Mesh:
    """The run's ``data x fsdp`` mesh of every device of every process.

    Several processes: the global batch must split over every device (each process feeds its
    own rows of it), which ``batch_size`` names when it does not.
    """
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    if jax.process_count() > 1 and cfg.batch_size % mesh.devices.size:
        raise ConfigError(f"bad value for 'batch_size': {cfg.batch_size} does not split over the {mesh.devices.size} "
                          f"devices of the {jax.process_count()} processes; use a multiple of {mesh.devices.size}")
    return mesh


def prepare(cfg: Config, store: Store, steps_per_call: int | None = None) -> Prepared:
    """``cfg`` made ready on the devices. K is measured from this host's per-call overhead unless
    the caller fixes it (a sweep's groups take a K that depends on their inputs alone)."""
    info = ensure_dataset(store, cfg.data.name)
    check_dataset(cfg, info)  # a model or objective that cannot take the dataset fails here, naming it
    check_selection(cfg, info)  # patience or best_metric without a validation split to select on
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
    # One batch shape for validation and test (the larger split's, up to eval_batch_size): where both fit
    # in one batch, as the default 10% carve beside a small test split does, evaluation compiles once.
    names = [name for name in ("val", "test") if name in splits]
    batch = min(cfg.eval_batch_size, max(len(splits[name]) for name in names))
    evals = {name: eval_batches(splits[name], batch, mesh, exact=True) for name in names}
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    spec = replace(spec, unroll=scan_unroll(params, cfg.batch_size, steps))
    target = AUTO_STEPS_PER_CALL
    if steps_per_call is None and not cfg.steps_per_call and reader is None:
        target = target_steps_per_call(params, cfg.batch_size)  # streamed batches are stacked K at a time: modest K
    first_eval = next(iter(evals.values()))
    if reader is None:
        call_args = (train_split.x.sharding, train_split.y.sharding, batch_sharding(mesh, cfg.batch_size, axis=1))
    else:
        call_args = (reader.stacked_sharding(),) * 2
    shardings = StepShardings(placement, call_args, (first_eval.x.sharding, first_eval.y.sharding,
                                                     first_eval.mask.sharding), replicated(mesh))
    # K from this host's measured overhead: process 0's, so every process compiles the same program.
    k = steps_per_call or distributed.share("steps_per_call", choose_steps_per_call(cfg, steps, target))
    return Prepared(cfg, store, info, spec, state, train_split, reader, evals, steps, k, mesh, shardings)


