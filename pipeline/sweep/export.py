"""``pipeline sweep export SWEEP_DIR --trial N [--run-dir DIR]``: one trial as an ordinary run folder.

The run folder holds what ``pipeline train`` would have written for the trial's overrides:
``config.json``, ``dataset.json``, ``metrics.parquet`` (the trial's rows of ``curves.parquet``),
``summary.json`` and an Orbax checkpoint of the trial's final state, taken from its
population's final checkpoint; a PBT member's also ``pbt_history.parquet`` (its hyperparameters
at each exploit step, also under ``pbt_history`` in ``summary.json``). ``pipeline runs show``,
``--resume`` and ``pipeline.load_run`` treat it like any other run. A sweep keeps its members'
best metrics, not their best weights, so the export has a ``latest`` checkpoint and (only when
the final state was the best) a ``best`` one.

An export is atomic. Every refusal (a ``--run-dir`` that holds anything, a trial that is
missing or unfinished) comes before anything is made, so a refused export changes nothing. The
run folder is written into a staging folder beside its name (``.NAME.tmp-ID``, locked by this
process: ``pipeline.durable.staging``), fsynced, and renamed to ``NAME`` with a rename that
refuses an existing target (an empty ``--run-dir`` is removed just before). A kill leaves
nothing or the whole export under ``NAME``; the next export of that name removes the staging
folder a dead exporter left. A full disk is one line naming the target, and the staging folder
is removed. ``PIPELINE_TEST_PAUSE_AT`` (tests only, ``pipeline.data.commit.pause_at``) stops an
export at ``export-locked``, ``export-checkpoint``, ``export-written`` or ``export-installed``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from pipeline.config import ConfigError
from pipeline.data import Store, ensure_dataset
from pipeline.data.commit import pause_at
from pipeline.durable.files import (
    fsync_dir,
    fsync_tree,
    is_real_dir,
    make_folders,
    remove_until_quiet,
    write_json,
    write_parquet,
)
from pipeline.durable.folder_locks import FolderLocked, folder_lock, lock_holder
from pipeline.durable.locks import LOCK_FILE
from pipeline.durable.records import read_json_object
from pipeline.durable.renames import rename_noreplace
from pipeline.durable.staging import collect_abandoned, new_staging
from pipeline.errors import PipelineError
from pipeline.experiments import load_experiment
from pipeline.signals import deferred_interrupts
from pipeline.sweep import folder, records
from pipeline.sweep.pbt import LINEAGE_FILE
from pipeline.track.metrics import MetricsTable
from pipeline.track.run_dir import default_runs_root, remove_if_unused
from pipeline.train.checkpoint import Checkpointer, DiskFull, checkpoint_meta, is_disk_full, read_checkpoint
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.population import stack
from pipeline.train.run import run_summary
from pipeline.train.run_folder import open_run_dir
from pipeline.train.selection import Selection
from pipeline.train.state import create_state


def export_trial(sweep_dir: Path, trial: int, store: Store, run_dir: Path | None = None,
                 runs_root: Path | None = None) -> Path:
    """Write trial ``trial`` of ``sweep_dir`` as a run folder, atomically; returns the folder.

    ``run_dir`` must be absent or an empty folder; without it the folder is a new
    ``RUNS/EXPERIMENT-trialN-YYYYmmdd-HHMMSS[-N]``.
    """
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
    book = with_best_value(book, select)
    if run_dir is not None:
        run_dir = Path(run_dir)
        _check_target(run_dir)
        root, base, target = run_dir.parent, None, run_dir
    else:  # a new folder EXPERIMENT-trialN-YYYYmmdd-HHMMSS[-N]
        root = Path(runs_root or default_runs_root())
        base = f"{experiment}-trial{trial}-{time.strftime('%Y%m%d-%H%M%S')}"
        target = _free_name(root, base)

    def mine(name: str) -> bool:
        """Staging debris of this export: of the same ``--run-dir``, or of the same trial's default names."""
        return name == target.name if base is None else name.startswith(f"{experiment}-trial{trial}-")

    made = make_folders(root)
    staging = None
    try:
        collect_abandoned(root, mine)
        staging = new_staging(target)
        with folder_lock(staging, "run folder"):
            pause_at("export-locked")
            open_run_dir(staging, experiment, cfg, info, str(source))
            _write_metrics(staging, sweep_dir, trial, book)
            pause_at("export-checkpoint")
            _write_checkpoint(staging, cfg.checkpoint_keep, state, book)
            history = _write_pbt_history(staging, sweep_dir, trial)

            def summarize(at: Path) -> None:
                summary = run_summary(at, experiment, cfg.data.name, book, book.wall_s, select)
                write_json(staging / "summary.json", {**summary, **({"pbt_history": history} if history else {})})

            summarize(target)
            fsync_tree(staging)
            pause_at("export-written")
            target = _install(staging, target, base, summarize)
            pause_at("export-installed")
    except BaseException as exc:
        if staging is not None:  # Orbax's writes in flight may make its folders again: until they end
            remove_until_quiet(lambda: [staging] if os.path.lexists(staging) else [], quiet=0.3)
        remove_if_unused(made)
        if is_disk_full(exc):
            raise DiskFull(f"{target}: No space left on device (nothing was exported)") from exc
        raise
    return target


def with_best_value(book: Bookkeeping, select: Selection) -> Bookkeeping:
    """The trial's record with ``best_value``: ``trials.parquet`` keeps the best step's metrics, not the
    value that selected it, so it is read back from them (the selection split and metric there)."""
    value = book.best_eval.get(select.split, {}).get(select.metric) if select.split else None
    return dataclasses.replace(book, best_value=value)


def _check_target(run_dir: Path) -> None:
    """Refuse a ``--run-dir`` that exists and is anything but an empty folder, changing nothing.

    A lone ``.lock`` nobody holds (left by a run that recorded nothing) counts as empty.
    """
    if not os.path.lexists(run_dir):
        return
    if not is_real_dir(run_dir):
        raise ConfigError(f"bad value for '--run-dir': {run_dir} exists and is not a folder")
    entries = sorted(os.listdir(run_dir))
    if "config.json" in entries:
        raise ConfigError(f"bad value for '--run-dir': {run_dir} already holds a run")
    others = [e for e in entries if e != LOCK_FILE]
    if others:
        raise ConfigError(f"bad value for '--run-dir': {run_dir} exists and is not empty (it holds "
                          f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); export into a new or "
                          "empty folder")
    holder = lock_holder(run_dir) if entries else None
    if holder is not None:
        raise FolderLocked(f"run folder {run_dir} is in use by pid {holder.get('pid', '?')} on host "
                           f"{holder.get('host', '?')}; wait for it to finish or use another --run-dir")


def _free_name(root: Path, base: str) -> Path:
    """``ROOT/BASE``, or ``ROOT/BASE-N`` for the first N free (the default name of an export)."""
    for n in itertools.count(1):
        path = root / (base if n == 1 else f"{base}-{n}")
        if not os.path.lexists(path):
            return path
    raise AssertionError("unreachable")


def _install(staging: Path, target: Path, base: str | None, summarize: Callable[[Path], None]) -> Path:
    """Rename the complete ``staging`` folder to ``target``, never over anything; returns where it went.

    A ``--run-dir`` (``base`` None) that is an empty folder is removed first; one that holds
    anything by now is refused. A default name (``BASE``) that another process took meanwhile
    becomes the next ``BASE-N``, and ``summarize(path)`` rewrites ``summary.json`` for it.
    """
    given = base is None
    while True:
        with deferred_interrupts():  # Ctrl-C and SIGTERM wait for the rename
            try:
                if given and os.path.lexists(target):
                    _check_target(target)
                    _remove_empty(target)
                rename_noreplace(staging, target)
            except FileExistsError:
                if given:
                    raise ConfigError(f"bad value for '--run-dir': {target} was made by another process "
                                      "during the export; nothing was exported") from None
            else:
                fsync_dir(target.parent)
                return target
        target = _free_name(target.parent, base)
        summarize(target)


def _remove_empty(folder: Path) -> None:
    """Delete an empty ``folder`` (a stale ``.lock`` in it too); OSError if anything else is in it."""
    try:
        os.unlink(folder / LOCK_FILE)
    except FileNotFoundError:
        pass
    os.rmdir(folder)


def trial_state(sweep_dir: Path, trial: int, cfg, info) -> object | None:
    """The final state of ``trial`` from its population's checkpoint (host arrays), or None."""
    _, like = create_state(cfg, info, cfg.steps)
    for population in sorted((sweep_dir / "checkpoints").glob("g*-c*")):
        if "." in population.name or not population.is_dir():
            continue
        try:  # a reader: no lock, and no clean-up of a running population's temporary folders
            restored = read_checkpoint(population, lambda meta: stack([like] * len(meta["slots"])))
        except Exception:  # noqa: BLE001 - an unreadable population simply does not hold the trial
            restored = None
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


def _write_pbt_history(run_dir: Path, sweep_dir: Path, trial: int) -> list[dict]:
    """A PBT member's hyperparameters over time (its rows of the sweep's lineage) as
    ``pbt_history.parquet``; returned as rows for ``summary.json`` (none for other sweeps)."""
    lineage = sweep_dir / LINEAGE_FILE
    if not lineage.is_file():
        return []
    table = records.read_parquet(lineage)
    mine = table.filter(np.asarray(table.column("trial")) == trial)
    write_parquet(mine, run_dir / "pbt_history.parquet")
    return [{k: v for k, v in row.items() if k not in ("member", "trial")} for row in mine.to_pylist()]


def _write_checkpoint(run_dir: Path, keep: int, state, book: Bookkeeping) -> None:
    meta = checkpoint_meta(book.steps, book.wall_s, [0], [0], [False], {0: book})
    checkpointer = Checkpointer(run_dir / "checkpoints", keep)
    try:
        checkpointer.save(book.steps, state, meta, best=book.best_step == book.steps)
        checkpointer.wait()
    finally:
        checkpointer.close()
