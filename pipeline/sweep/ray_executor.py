"""``pipeline sweep ... --executor ray [--ray-address ADDR]``: a sweep's populations as Ray tasks.

The unit of work is one population (a chunk of a group's trials, ``PopulationRun``), run by a
Ray Core task (``run_population``) on whichever machine of the cluster Ray picks:

* The task plans the sweep again from the same inputs (experiment, space, options), so it builds
  exactly the driver's trials; reads the chunking from ``sweep.json``; prepares the group's data
  on its own devices and runs its one population with ``runner.run_group``.
* The population checkpoints into the shared sweep folder (``checkpoints/gG-cC/``, Orbax), as it
  does locally. A task whose worker is lost is run again by Ray (``max_retries``) on another
  machine, and continues from that checkpoint; so does a sweep run again with the same command.
* The task writes no table: it hands its members' records, its curves and its plan back. This
  process, the driver, merges them as each task ends (``curves.parquet``, ``trials.parquet``,
  the plans in ``sweep.json``) and writes the summary.

The sweep folder, the data store and the experiment file must be at the same paths on every
machine (a shared file system). Ray is an optional extra: ``pip install 'pipeline[ray]'``.

``runner.py`` imports this module and hands it what it needs of the runner as a ``Runner``
(options class, planning, running, recording): imports between the two point one way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.train.engine import Interrupted
from pipeline.train.session import stop_message

EXTRA = "ray"
MAX_RETRIES = 3  # a lost worker's population runs again (from its checkpoint) this many times
WAIT_S = 0.5  # how often the driver looks at Ctrl-C while tasks run


def require() -> Any:
    """The ``ray`` module; without the extra, one line naming it."""
    try:
        import ray
    except ImportError:
        raise PipelineError(f"--executor ray needs Ray, which is not installed: pip install 'pipeline[{EXTRA}]' "
                            "(or pip install ray)") from None
    return ray


@dataclass(frozen=True)
class Task:
    """What a worker needs to run one population: plain values, the same on every machine."""

    experiment: str  # a name in experiments/ or an absolute path
    args: tuple[str, ...]
    store: str  # the data store root, absolute
    sweep_dir: str  # absolute
    options: dict[str, Any]  # the sweep's options that decide its trials and plans
    group: int
    index: int  # the population's chunk within its group


@dataclass(frozen=True)
class Runner:
    """What the sweep runner (``runner.py``) hands the executor: its options class and the functions
    that plan a sweep, run a group's populations and record a population's results.

    The runner imports this module, never the other way round; the functions travel to the
    workers with each task (by reference: a worker imports their module).
    """

    options: type  # SweepOptions
    resolve_sweep: Callable[..., Any]
    run_group: Callable[..., None]
    record_population: Callable[..., None]
    record_plans: Callable[..., None]


def run_population(task: Task, runner: Runner) -> dict[str, Any]:
    """On a worker: one population of the sweep, from its checkpoint if it has one.

    Returns ``{"key", "records", "curves", "plan"}``: its members' bookkeeping, its metrics
    table and its group's plan, for the driver to record.
    """
    from pipeline.data import Store
    from pipeline.durable.records import read_json
    from pipeline.sweep import records
    from pipeline.sweep.folder import SWEEP_FILE
    from pipeline.train.prepare import prepare

    opts = runner.options(**{**task.options, "show_progress": False})
    store = Store(task.store)
    sweep_dir = Path(task.sweep_dir)
    sp = runner.resolve_sweep(task.experiment, list(task.args), store, opts)
    saved = read_json(sweep_dir / SWEEP_FILE)
    for g, chunks in zip(sp.groups, saved["chunks"]):
        g.chunks = chunks
    g = next(g for g in sp.groups if g.id == task.group)
    members = g.chunks[task.index]
    recs = {t.id: records.TrialRecord() for t in sp.trials}
    recs.update(records.read_records(sweep_dir / "trials.parquet"))
    plans = dict(saved.get("plans", {}))
    found: dict[str, Any] = {}
    prep = prepare(sp.trials[g.trials[0]].cfg, store, steps_per_call=g.steps_per_call)
    try:
        runner.run_group(g, prep, sp.trials, [members], recs, sweep_dir, opts, plans, dict(plans), {"set": False},
                         lambda: None, lambda steps, loss: None, sp.name,
                         on_population=lambda population: found.update(curves=population.curves(),
                                                                        key=population.folder.name))
    finally:
        if prep.reader is not None:
            prep.reader.close()
    return {"key": found["key"], "records": {t: recs[t].to_json() for t in members}, "curves": found["curves"],
            "plan": plans.get(str(g.id))}


def _options(opts: Any) -> dict[str, Any]:
    out = asdict(opts)
    for key in ("sweep_dir", "sweeps_root"):
        out[key] = None  # the task gets the folder itself
    out["rungs"] = tuple(out["rungs"])
    return out


def _experiment_path(experiment: str) -> str:
    """An experiment file as an absolute path (a worker's working folder is not ours); a name as it is."""
    path = Path(experiment)
    return str(path.resolve()) if path.suffix == ".py" or path.exists() else experiment


def _start(ray: Any, address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"--executor ray: cannot connect to {where}: {text}") from None


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_populations(ray: Any, experiment: str, args: list[str], store: Any, opts: Any, sweep_dir: Path,
                    groups: list[Any], recs: dict, plans: dict, interrupted: dict, write_trials,
                    on_progress, runner: Runner) -> None:
    """Every unfinished population as a Ray task; each one's results recorded as it ends.

    Ctrl-C (or SIGTERM) cancels the tasks: their populations keep their last checkpoints, and the
    same command continues the sweep.
    """
    from pipeline.sweep import records
    from pipeline.train.evaluation import Bookkeeping

    _start(ray, opts.ray_address)
    remote = ray.remote(max_retries=MAX_RETRIES, num_cpus=1, num_gpus=opts.ray_gpus or 0)(run_population)
    options = _options(opts)
    pending: dict[Any, tuple[int, int, int]] = {}
    for g in groups:
        for index, members in enumerate(g.chunks):
            if all(recs[t].status in records.FINISHED for t in members):
                continue
            task = Task(_experiment_path(experiment), tuple(args), str(Path(store.root).resolve()),
                        str(Path(sweep_dir).resolve()), options, g.id, index)
            pending[remote.remote(task, runner)] = (g.id, index, g.total_steps * len(members))
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
            if interrupted["set"]:
                raise Interrupted(stop_message("", f"continue the sweep with the same command and "
                                                   f"--sweep-dir {sweep_dir}"))
            for ref in done:
                group, index, steps = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task's failure is one line naming its population
                    cause = _cause(exc)
                    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
                    if isinstance(cause, PipelineError):
                        raise PipelineError(f"population g{group}-c{index}: {text}") from None
                    raise PipelineError(f"population g{group}-c{index} failed on its Ray worker: "
                                        f"{type(cause).__name__}: {text}") from None
                for t, record in result["records"].items():
                    vars(recs[int(t)]).update(vars(Bookkeeping.from_json(record)))
                runner.record_population(sweep_dir, result["key"], result["curves"], write_trials)
                if result["plan"] is not None and str(group) not in plans:  # the first population's
                    plans[str(group)] = result["plan"]
                    runner.record_plans(sweep_dir, plans)
                on_progress(steps, float("nan"))
    finally:
        for ref in pending:
            ray.cancel(ref, force=False)
        if pending:
            time.sleep(WAIT_S)  # let the cancelled tasks stop before the driver leaves
