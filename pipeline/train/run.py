"""``pipeline train``: one config trained as a session of one member, into a run folder.

Several processes (``pipeline.distributed``) run the same ``train``: every process steps its
devices' share of the one program; only process 0 writes the run folder (config, metrics,
summary, plots, trackers, hooks), and every decision that could differ between processes
(resume, a checkpoint by the clock, a Ctrl-C) is process 0's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import distributed
from pipeline.config import Config, to_dict
from pipeline.data import Store
from pipeline.durable.files import write_json
from pipeline.hooks import Hook, Hooks, RunInfo
from pipeline.signals import sigint_flag
from pipeline.track.background import plot_later
from pipeline.track.profile import Profiler
from pipeline.track.progress import Progress
from pipeline.track.trackers import trackers
from pipeline.train.engine import Engine, Events, Interrupted, NonFiniteLoss, Policy
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.population import SoloPopulation
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs
from pipeline.train.resume import finished_message, reopen, resumed_line, steps_per_call_from
from pipeline.train.run_folder import open_run_dir
from pipeline.train.selection import Selection
from pipeline.train.session import Session, Start, stop_message

__all__ = ["Interrupted", "NonFiniteLoss", "train"]


def run_policy(cfg: Config, total: int, steps_per_call: int) -> Policy:
    return Policy(total, steps_per_call, cfg.eval_every, cfg.patience, cfg.checkpoint_every, cfg.checkpoint_minutes)


def train(cfg: Config, experiment: str, run_dir: Path, store: Store, show_progress: bool = True,
          experiment_file: str = "", hooks: list[Hook] | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming it when it holds an earlier run of this config.

    ``hooks`` (and the trackers ``cfg.log`` names) are called on the host between compiled
    calls. Returns the summary object (also written to ``run_dir/summary.json``). Several
    processes: each calls this with the same ``run_dir`` (process 0's); only process 0 writes
    to it (its hooks and trackers run there only), and whether to resume is its decision.
    Every process returns the summary.
    """
    primary = distributed.is_primary()
    run_hooks = Hooks(trackers(cfg) + list(hooks or []) if primary else [])  # a missing extra, a bad store fail first
    profiler = Profiler(cfg.profile if primary else "", run_dir / "profile")
    prep = prepare(cfg, store)
    resuming = distributed.primary_does("resuming", lambda: open_run_dir(run_dir, experiment, cfg, prep.info,
                                                                         experiment_file))
    progress = Progress(prep.total_steps, enabled=show_progress and primary)
    with sigint_flag() as stop:
        session = Session(prep, run_dir / "checkpoints", run_dir / "metrics.parquet", keep=cfg.checkpoint_keep,
                          members=False, stop=stop, primary=primary, profiler=profiler,
                          stopped=lambda step: stop_message(f"at step {step}",
                                                            f"resume with --run-dir {run_dir} --resume"))
        session.hooks = {0: run_hooks}
        state, start = prep.state, Start()
        restored = session.restore(prep.state, onto=prep.shardings.state) if resuming else None
        if restored is not None:  # restored straight onto the run's shardings (any mesh it was saved from)
            state, meta = restored
            start = Start.from_meta(meta)
            book = start.books[0]
            reopen(book, start.step, prep.total_steps, cfg.patience)  # a finished run extended: it trains on
            start.live = np.array([book.status in ("pending", "running")])
            prep.steps_per_call = steps_per_call_from(prep.steps_per_call, start.step)  # calls land on evaluations
        feed = session.begin(start)
        if restored is not None and primary:  # said once the resume holds: state, records and data position
            print(resumed_line(start.step, prep.total_steps) if start.live[0] else
                  finished_message(run_dir, start.books[0], start.step, prep.total_steps, cfg), file=sys.stderr)
        programs = solo_programs(prep.spec, prep.steps_per_call, prep.reader is not None, prep.shardings)
        pop = SoloPopulation(programs, [state], np.ones(1, bool), feed, start.step)
        events = Events(on_progress=lambda last, n, loss: progress.update(last, loss),
                        on_evaluated=lambda at, evals: progress.note(at, evals))
        engine = Engine(pop, session, run_policy(cfg, prep.total_steps, prep.steps_per_call), prep.selection, events)
        try:
            with progress:
                run_hooks.on_start(RunInfo(run_dir, experiment, to_dict(cfg), prep.total_steps, start.step))
                progress.update(start.step, float("nan"))
                engine.execute()
        finally:
            session.close()
            if sys.exc_info()[0] is not None:  # failed or interrupted: the hooks still close (files, runs)
                session.close_hooks()
    book = start.books[0]
    summary = run_summary(run_dir, experiment, cfg.data.name, book, engine.wall(), prep.selection)
    if not primary:
        return summary
    write_json(run_dir / "summary.json", summary)
    session.close_hooks(summary)
    if cfg.plot:
        plot_later(run_dir)
    return summary


def split_metrics(evals: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"test/accuracy": ..., "val/accuracy": ...}``: one evaluation, test first."""
    return {f"{split}/{name}": value for split in ("test", "val") for name, value in evals.get(split, {}).items()}


def run_summary(run_dir: Path, experiment: str, data: str, book: Bookkeeping, wall: float,
                select: Selection) -> dict[str, Any]:
    """``summary.json`` of a run (or of a sweep trial exported as one).

    ``metrics`` are the final step's; ``best`` is the selected step with every split's metrics there
    (the test metrics of the best checkpoint, for reporting); ``selection`` says what the decisions
    read: validation, nothing (no validation split: the best is the final step), or test, flagged.
    """
    return {
        "run_dir": str(run_dir),
        "experiment": experiment,
        "data": data,
        "steps": book.steps,
        "wall_s": round(wall, 3),
        "metrics": split_metrics(book.last_eval),
        "best": {"split": select.split or None, "metric": select.metric,
                 "value": book.best_value, "step": book.best_step, "metrics": split_metrics(book.best_eval)},
        "selection": select.record(),
        "stopped_early": book.stopped_early,
    }
