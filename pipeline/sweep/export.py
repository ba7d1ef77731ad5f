"""``pipeline sweep export SWEEP_DIR --trial N [--run-dir DIR]``: one trial as an ordinary run folder.

The run folder holds what ``pipeline train`` would have written for the trial's overrides:
``config.json``, ``dataset.json``, ``metrics.parquet`` (the trial's rows of ``curves.parquet``),
``summary.json`` and an Orbax checkpoint of the trial's final state, taken from its
population's final checkpoint. ``pipeline runs show``, ``--resume`` and ``pipeline.load_run``
treat it like any other run. A sweep keeps its members' best metrics, not their best weights,
so the export has a ``latest`` checkpoint and (only when the final state was the best) a
``best`` one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from pipeline.config import ConfigError
from pipeline.data import Store, ensure_dataset
from pipeline.durable.files import make_folders, write_json
from pipeline.durable.folder_locks import folder_lock
from pipeline.durable.records import read_json_object
from pipeline.errors import PipelineError
from pipeline.experiments import load_experiment
from pipeline.sweep import folder, records
from pipeline.track.metrics import MetricsTable
from pipeline.track.run_dir import default_runs_root, new_run_dir
from pipeline.train.checkpoint import Checkpointer, checkpoint_meta
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.population import stack
from pipeline.train.run import run_summary
from pipeline.train.run_folder import open_run_dir
from pipeline.train.selection import Selection
from pipeline.train.state import create_state


def export_trial(sweep_dir: Path, trial: int, store: Store, run_dir: Path | None = None,
                 runs_root: Path | None = None) -> Path:
    """Write trial ``trial`` of ``sweep_dir`` as a run folder; returns the folder."""
    if not folder.is_sweep_dir(sweep_dir):
        raise ConfigError(f"{sweep_dir} is not a sweep folder (no {folder.SWEEP_FILE})")
    description = read_json_object(sweep_dir / folder.SWEEP_FILE, ("experiment",))
    rows = {int(r["trial"]): r for r in records.read_parquet(sweep_dir / "trials.parquet").to_pylist()}
    if trial not in rows:
        raise ConfigError(f"bad value for '--trial': {sweep_dir} has no trial {trial} (trials 0..{len(rows) - 1})")
    book = records.read_records(sweep_dir / "trials.parquet").get(trial)
    if book is None:
        raise PipelineError(f"trial {trial} of {sweep_dir} has not finished (status {rows[trial]['status']}); "
                            "finish the sweep first (run it again with --sweep-dir)")
    experiment = description["experiment"]
    cfg, source, _ = load_experiment(description.get("experiment_file") or experiment, rows[trial]["overrides"])
    info = ensure_dataset(store, cfg.data.name)
    state = trial_state(sweep_dir, trial, cfg, info)
    if state is None:
        raise PipelineError(f"the weights of trial {trial} were not kept (a halving rung stopped it and its "
                            f"population was repacked); train it again with: pipeline train {experiment} "
                            + " ".join(rows[trial]["overrides"]))
    split, metric = description.get("selection", "test/accuracy").split("/")
    select = Selection(split, metric, bool(description.get("higher_is_better", True)))
    made: list[Path] = []
    if run_dir is None:
        run_dir = new_run_dir(runs_root or default_runs_root(), f"{experiment}-trial{trial}", made)
    else:
        made = make_folders(run_dir)
    with folder_lock(run_dir, "run folder"):
        if (run_dir / "config.json").exists():
            raise ConfigError(f"bad value for '--run-dir': {run_dir} already holds a run")
        open_run_dir(run_dir, experiment, cfg, info, str(source))
        _write_metrics(run_dir, sweep_dir, trial, book)
        _write_checkpoint(run_dir, cfg.checkpoint_keep, state, book)
        write_json(run_dir / "summary.json", run_summary(run_dir, experiment, cfg.data.name, book, book.wall_s,
                                                          select))
    return run_dir


def trial_state(sweep_dir: Path, trial: int, cfg, info) -> object | None:
    """The final state of ``trial`` from its population's checkpoint (host arrays), or None."""
    _, like = create_state(cfg, info, cfg.steps)
    for population in sorted((sweep_dir / "checkpoints").glob("g*-c*")):
        if "." in population.name or not population.is_dir():
            continue
        checkpointer = Checkpointer(population, keep=1)
        try:
            restored = checkpointer.read(lambda meta: stack([like] * len(meta["slots"])))
        except Exception:  # noqa: BLE001 - an unreadable population simply does not hold the trial
            restored = None
        finally:
            checkpointer.close()
        if restored is None or trial not in restored[1]["slots"]:
            continue
        slot = restored[1]["slots"].index(trial)
        return jax.tree.map(lambda a, slot=slot: np.asarray(a[slot]), restored[0])
    return None


def _write_metrics(run_dir: Path, sweep_dir: Path, trial: int, book: Bookkeeping) -> None:
    curves = records.read_curves(sweep_dir / "curves.parquet")
    rows = curves.filter(np.asarray(curves.column("trial")) == trial)
    table = MetricsTable(run_dir / "metrics.parquet")
    steps, splits, names = (rows.column(c).to_numpy(zero_copy_only=False) for c in ("step", "split", "name"))
    values = rows.column("value").to_numpy()
    for split, name in sorted(set(zip(splits, names))):
        mine = (splits == split) & (names == name)
        table.add(steps[mine], split, {name: values[mine]}, wall_s=float("nan"))
    table.flush()


def _write_checkpoint(run_dir: Path, keep: int, state, book: Bookkeeping) -> None:
    meta = checkpoint_meta(book.steps, book.wall_s, [0], [0], [False], {0: book})
    checkpointer = Checkpointer(run_dir / "checkpoints", keep)
    try:
        checkpointer.save(book.steps, state, meta, best=book.best_step == book.steps)
        checkpointer.wait()
    finally:
        checkpointer.close()
