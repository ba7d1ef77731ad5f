"""``pipeline train --run-dir DIR --resume [KEY=VALUE ...]``: a run resumed from its own record.

The config is the one the run recorded (``config.json``), its experiment file is loaded again (its
model family, its ``hooks()``), and the only overrides are those that extend or re-lay-out the run
(``RESUMABLE_CHANGES``: more steps or epochs, another patience, evaluation or checkpoint cadence,
trackers, mesh). An override of anything else is one line naming the key: it would change what the
saved state means. A value equal to the recorded one is no change, so retyping the whole command works.

A finished run is not trained again: ``plan`` returns the one line that says where it ended and why,
and how to extend it. Extending works from the final checkpoint: a run that ended ``done`` trains on
when the new total is larger; an early-stopped one when its patience is raised (or 0) and steps remain.
``reopen`` is that same decision, taken by ``pipeline.train.run`` on the restored bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, apply_overrides, flat_keys
from pipeline.durable.records import read_json_object
from pipeline.errors import PipelineError
from pipeline.train.checkpoint import books_from_meta, latest_meta
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.run_folder import CONFIG_FILE, RESUMABLE_CHANGES, read_run, saved_config


@dataclass
class Resume:
    """What ``pipeline train --resume`` runs: the recorded config with the overrides, the recorded
    experiment (name and file) and its hooks; ``finished`` is the line of a run with nothing left to
    train (then nothing is run)."""

    cfg: Config
    experiment: str
    experiment_file: str
    hooks: list[Any] = field(default_factory=list)
    finished: str = ""


def plan(run_dir: Path, experiment: str | None, overrides: list[str]) -> Resume:
    """The resume of ``run_dir``; ``experiment``, when given, must be the one the run recorded."""
    from pipeline.experiments import experiment_name, load_experiment

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise PipelineError(f"--resume: {run_dir} is not a run folder (no {CONFIG_FILE}); give --run-dir of a run")
    record = read_json_object(run_dir / CONFIG_FILE, ("config",))
    name, source = str(record.get("experiment", "")), str(record.get("experiment_file", ""))
    if experiment and experiment_name(experiment) != name:
        raise ConfigError(f"--resume: {run_dir} is a run of experiment '{name}', not '{experiment_name(experiment)}'; "
                          f"leave the experiment out to resume it: pipeline train --run-dir {run_dir} --resume")
    if source and not Path(source).is_file():
        if not experiment:
            raise ConfigError(f"--resume: the experiment file of {run_dir} ({source}) is gone; name the experiment: "
                              f"pipeline train EXPERIMENT --run-dir {run_dir} --resume")
        source = experiment
    hooks = []
    if source:  # registers its model family and objective, and gives its hooks; its config() is not used
        _, path, hooks = load_experiment(source)
        source = str(path)
    _, saved = saved_config(run_dir / CONFIG_FILE)
    cfg = apply_overrides(saved, overrides)
    refuse_changes(run_dir, saved, cfg)
    return Resume(cfg, name, source, hooks, finished_line(run_dir, cfg))


def refuse_changes(run_dir: Path, saved: Config, cfg: Config) -> None:
    """One line naming every key the overrides change that a resume cannot change."""
    old, new = flat_keys(saved), flat_keys(cfg)
    refused = [k for k in new if old.get(k) != new[k] and k not in RESUMABLE_CHANGES]
    if refused:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in refused)
        raise ConfigError(f"a resume cannot change {shown}: the run in {run_dir} was trained with its recorded "
                          f"values (a different config needs another --run-dir); a resume may change only "
                          f"{', '.join(RESUMABLE_CHANGES)}")


def planned_total(run_dir: Path, cfg: Config) -> int:
    """The run's total steps under ``cfg`` (``epochs`` counted on the recorded dataset's train rows)."""
    from pipeline.train.prepare import total_steps, train_rows

    if not cfg.epochs:
        return cfg.steps
    _, _, info = read_run(run_dir)
    return total_steps(cfg, train_rows(cfg, info))


def reopen(book: Bookkeeping, step: int, total: int, patience: int) -> bool:
    """Whether a restored run that had finished trains on (and mark it running): it ended ``done`` and
    the total grew, or stopped early and its patience now allows more evaluations without improvement."""
    extended = step < total and (
        book.status == "done"
        or (book.status == "early_stopped" and (patience == 0 or patience > book.evals_since_best)))
    if extended:
        book.status, book.stopped_at = "running", None
    return extended


def finished_line(run_dir: Path, cfg: Config) -> str:
    """The line of a run ``cfg`` leaves nothing to train in ("" when there is some): where it ended,
    why, and how to extend it."""
    found = latest_meta(run_dir / "checkpoints")
    if found is None:
        return ""
    step, meta = found
    book = books_from_meta(meta).get(0, Bookkeeping())
    total = planned_total(run_dir, cfg)
    if book.status in ("pending", "running"):
        if total < step:
            key = "epochs" if cfg.epochs else "steps"
            raise ConfigError(f"bad value for '{key}': {total} steps end before step {step}, where the run in "
                              f"{run_dir} stands; a resume can only extend a run")
        return ""
    if reopen(replace(book), step, total, cfg.patience):  # a copy: deciding marks it running
        return ""
    return finished_message(run_dir, book, step, total, cfg)


def finished_message(run_dir: Path, book: Bookkeeping, step: int, total: int, cfg: Config) -> str:
    """Where a finished run ended and why, and the command that trains it on."""
    again = f"pipeline train --run-dir {run_dir} --resume"
    if book.status == "done":
        more = (f"epochs=NEW_EPOCHS (more than {cfg.epochs})" if cfg.epochs
                else f"steps=NEW_TOTAL (more than {step})")
        return (f"run {run_dir} is finished: it trained all {step} steps. To train on "
                f"from its final checkpoint: {again} {more}")
    if book.status == "early_stopped":
        best = "" if book.best_step is None else f", best at step {book.best_step}"
        return (f"run {run_dir} is finished: it stopped early at step {step} ({book.evals_since_best} evaluations "
                f"without improvement, patience {cfg.patience}{best}). To train on from its "
                f"final checkpoint: {again} patience=N (more than {book.evals_since_best}, or 0 for no early "
                f"stopping){'' if step < total else ' steps=NEW_TOTAL'}")
    return f"run {run_dir} is finished: it ended at step {step} ({book.status}); it cannot be trained on"


def resumed_line(step: int, total: int) -> str:
    return f"resumed from step {step} of {total}"


def steps_per_call_from(k: int, step: int) -> int:
    """K for a run resumed at ``step``: the largest divisor of ``k`` that ``step`` is a multiple of.

    ``k`` divides the run's total and its evaluation and checkpoint intervals, but the resumed step
    is a multiple of the K the run had (a time-based checkpoint, a Ctrl-C), which may be another
    (K is measured on the host) or came from another total (a finished run extended). Calls from
    there must still land on every evaluation and on the last step.
    """
    return math.gcd(k, step) if step else k
