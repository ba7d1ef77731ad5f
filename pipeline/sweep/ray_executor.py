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

Nothing here waits without a bound (``--ray-timeout``, 30 s by default). ``connect`` runs before the
sweep is resolved or its folder made: it probes the cluster's address with a TCP connect first
(``ray.init`` retries an address where nothing listens for minutes), runs ``ray.init`` on a
watchdog thread, and refuses a task shape no node can hold (``--ray-gpus`` on a cluster without
GPUs). A population's task yields a first value as soon as it runs, so the driver knows when one
has started; when none has within the timeout of submission, the tasks are cancelled, the
connection is shut down and the sweep stays as checkpointed, to be continued by the same command.

``runner.py`` imports this module and hands it what it needs of the runner as a ``Runner``
(options class, planning, running, recording): imports between the two point one way.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line
from pipeline.train.engine import Interrupted
from pipeline.train.session import stop_message

EXTRA = "ray"
MAX_RETRIES = 3  # a lost worker's population runs again (from its checkpoint) this many times
WAIT_S = 0.5  # how often the driver looks at Ctrl-C while tasks run
TASK_CPUS = 1  # CPUs each population's task asks Ray for
PROBE_EVERY_S = 0.5  # how often a silent address is tried again until --ray-timeout
STARTED = "started"  # what a population's task yields first, as soon as it runs


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


def population_task(task: Task, runner: Runner) -> Iterator[Any]:
    """On a worker: ``STARTED`` as soon as the task runs, then ``run_population``'s result.

    A Ray generator task streams the first value back before the population ends, which tells
    the driver that the cluster could schedule it (``--ray-timeout`` counts until then). A retried
    task yields the same two values again; Ray hands the driver the ones it has not seen.
    """
    yield STARTED
    yield run_population(task, runner)


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


_connection = {"ours": False}  # whether this module's ray.init made the connection (it may shut it down)


def _target(address: str | None) -> tuple[str | None, str]:
    """The address ``ray.init(address)`` reaches (``RAY_ADDRESS`` stands in for none or ``auto``, as
    Ray reads it; None or ``local``: a cluster started here), and how a line names it."""
    env = os.environ.get("RAY_ADDRESS", "")
    if env and address in (None, "auto"):
        return env, f"RAY_ADDRESS={env}"
    return address, f"--ray-address {address}"


def _where(address: str | None) -> str:
    target, _ = _target(address)
    return "the local Ray cluster" if target in (None, "local") else f"the Ray cluster at {target}"


def _endpoint(address: str) -> tuple[str, int] | None:
    """The host and port a TCP connect can probe: of ``HOST:PORT`` (the GCS), ``ray://HOST[:PORT]``
    (the Ray Client server) or ``auto`` (the cluster Ray finds on this machine); None where there
    is nothing to probe (another scheme, a malformed address: ``ray.init`` says what is wrong)."""
    default = None
    if address.startswith("ray://"):
        address, default = address[len("ray://"):].split("/")[0], 10001
    elif "://" in address:
        return None
    elif address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # noqa: BLE001 - no cluster found: ray.init says so at once
            return None
    host, sep, port = address.rpartition(":")
    if not sep and default is not None:
        host, port = address, str(default)
    host = host.strip("[]")
    return (host, int(port)) if host and port.isdigit() else None


def _probe(host: str, port: int, deadline: float) -> OSError | None:
    """None once a TCP connection to ``host:port`` opens before ``deadline`` (tried every
    ``PROBE_EVERY_S``, so a cluster still starting is waited for); else the last refusal."""
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.05)):
                return None
        except OSError as exc:
            error = exc
        left = deadline - time.monotonic()
        if left <= 0:
            return error
        time.sleep(min(PROBE_EVERY_S, left))


class _NotMainThread(logging.Filter):
    """Ray's warning that ``ray.init`` off the main thread leaves SIGTERM alone: that is the point
    (SIGTERM stays the pipeline's: save, then stop)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not the main thread" not in record.getMessage()


def _init_within(ray: Any, seconds: float, **kwargs: Any) -> bool:
    """``ray.init(**kwargs)`` on a watchdog thread: True when it returned within ``seconds`` (its
    exception raised here), False when it still blocks (it is left to Ray, on a daemon thread)."""
    outcome: dict[str, BaseException] = {}

    def connect() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    quiet = _NotMainThread()
    logger = logging.getLogger("ray._private.worker")
    logger.addFilter(quiet)
    try:
        thread = threading.Thread(target=connect, name="ray-connect", daemon=True)
        thread.start()
        thread.join(seconds)
    finally:
        logger.removeFilter(quiet)
    if thread.is_alive():
        return False
    if "error" in outcome:
        raise outcome["error"]
    return True


def _start(ray: Any, address: str | None, timeout: float) -> None:
    """Connected to the cluster at ``address`` within ``timeout`` seconds, or a local cluster
    started (``address`` None). Every failure is one line naming the address."""
    if ray.is_initialized():
        return
    target, name = _target(address)
    kwargs = {"address": address, "include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    try:
        if target in (None, "local"):
            ray.init(**kwargs)
        else:
            deadline = time.monotonic() + timeout
            endpoint = _endpoint(target)
            refused = _probe(*endpoint, deadline) if endpoint is not None else None
            if refused is not None or not _init_within(ray, max(deadline - time.monotonic(), 1.0), **kwargs):
                unknown = f" (cannot resolve {endpoint[0]})" if isinstance(refused, socket.gaierror) else ""
                raise PipelineError(f"{name}: no Ray cluster answered within {timeout:g} s{unknown}")
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's refusal (a bad address, no cluster found): one line
        if target in (None, "local"):
            raise PipelineError(f"--executor ray: cannot start a local Ray cluster: {first_line(exc)}") from None
        raise PipelineError(f"{name}: cannot connect to the Ray cluster: {first_line(exc)}") from None
    _connection["ours"] = True


def _disconnect(ray: Any) -> None:
    """The connection this module made shut down (one a caller made before is theirs to keep)."""
    if _connection["ours"] and ray.is_initialized():
        ray.shutdown()
    _connection["ours"] = False


def _amount(value: float, unit: str) -> str:
    return f"no {unit}s" if not value else f"{value:g} {unit}" + ("" if value == 1 else "s")


def _launchable() -> list[dict[str, float]]:
    """The resources of each node group an autoscaler may start (none where the cluster has no
    autoscaler, or Ray does not say): such a node can run a task no live node can."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        return [] if config is None else [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
    except Exception:  # noqa: BLE001 - a Ray Client, an older GCS: only the live nodes count
        return []


def check_resources(ray: Any, gpus: float, where: str) -> None:
    """Refuses, in one line naming the option and what the cluster has, a task that no node of the
    cluster (live, or of a group its autoscaler may start) can hold: ``--ray-gpus`` above every
    node's GPUs, or the task's CPU on a cluster of CPU-less nodes. Ray would queue such a task
    forever."""
    live = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    shapes = live + _launchable()
    need = {"CPU": float(TASK_CPUS), **({"GPU": float(gpus)} if gpus else {})}
    if any(all(s.get(k, 0.0) >= v for k, v in need.items()) for s in shapes):
        return
    total = ray.cluster_resources()
    has = (f"it has {_amount(total.get('CPU', 0.0), 'CPU')} and {_amount(total.get('GPU', 0.0), 'GPU')} on "
           f"{len(live)} node{'' if len(live) == 1 else 's'}")
    most_gpus = max((s.get("GPU", 0.0) for s in shapes), default=0.0)
    if gpus and most_gpus < gpus:
        most = f", at most {most_gpus:g} a node" if most_gpus else ""
        raise PipelineError(f"--ray-gpus {gpus:g}: no node of {where} has {_amount(gpus, 'GPU')} for a "
                            f"population's task ({has}{most})")
    if max((s.get("CPU", 0.0) for s in shapes), default=0.0) < TASK_CPUS:
        raise PipelineError(f"--executor ray: each population's task needs {_amount(TASK_CPUS, 'CPU')}, and no "
                            f"node of {where} has one ({has})")
    raise PipelineError(f"--ray-gpus {gpus:g}: no node of {where} has {_amount(gpus, 'GPU')} and "
                        f"{_amount(TASK_CPUS, 'CPU')} together ({has})")


def connect(ray: Any, opts: Any) -> None:
    """Connected to the cluster ``--ray-address`` names (a local one started without it) within
    ``--ray-timeout``, with a node that can run a population's task; else one line, and the
    connection made here shut down. The sweep runner calls it before it resolves the sweep or
    creates its folder, so a cluster that cannot run the sweep leaves nothing behind."""
    _start(ray, opts.ray_address, opts.ray_timeout)
    try:
        check_resources(ray, opts.ray_gpus or 0.0, _where(opts.ray_address))
    except BaseException:
        _disconnect(ray)
        raise


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def run_populations(ray: Any, experiment: str, args: list[str], store: Any, opts: Any, sweep_dir: Path,
                    groups: list[Any], recs: dict, plans: dict, interrupted: dict, write_trials,
                    on_progress, runner: Runner) -> None:
    """Every unfinished population as a Ray task; each one's results recorded as it ends.

    Ctrl-C (or SIGTERM) cancels the tasks: their populations keep their last checkpoints, and the
    same command continues the sweep. So does a cluster on which no task starts within
    ``--ray-timeout`` of submission: one line, the tasks cancelled, the connection shut down.
    """
    from pipeline.sweep import records
    from pipeline.train.evaluation import Bookkeeping

    if not ray.is_initialized():
        connect(ray, opts)
    remote = ray.remote(max_retries=MAX_RETRIES, num_cpus=TASK_CPUS, num_gpus=opts.ray_gpus or 0)(population_task)
    options = _options(opts)
    pending: dict[Any, tuple[int, int, int]] = {}
    for g in groups:
        for index, members in enumerate(g.chunks):
            if all(recs[t].status in records.FINISHED for t in members):
                continue
            task = Task(_experiment_path(experiment), tuple(args), str(Path(store.root).resolve()),
                        str(Path(sweep_dir).resolve()), options, g.id, index)
            pending[remote.remote(task, runner)] = (g.id, index, g.total_steps * len(members))
    submitted, started = time.monotonic(), False
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
            if interrupted["set"]:
                raise Interrupted(stop_message("", f"continue the sweep with the same command and "
                                                   f"--sweep-dir {sweep_dir}"))
            if not started and not done and time.monotonic() - submitted > opts.ray_timeout:
                _unscheduled(ray, opts, pending, sweep_dir)
            for gen in done:
                group, index, steps = pending[gen]
                try:
                    ref = next(gen, None)  # the task's next value: STARTED, then its result
                    result = None if ref is None else ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task's failure is one line naming its population
                    pending.pop(gen)
                    cause = _cause(exc)
                    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
                    if isinstance(cause, PipelineError):
                        raise PipelineError(f"population g{group}-c{index}: {text}") from None
                    raise PipelineError(f"population g{group}-c{index} failed on its Ray worker: "
                                        f"{type(cause).__name__}: {text}") from None
                if isinstance(result, str) and result == STARTED:
                    started = True
                    continue
                pending.pop(gen)
                if result is None:
                    raise PipelineError(f"population g{group}-c{index}: its Ray task ended without a result")
                for t, record in result["records"].items():
                    vars(recs[int(t)]).update(vars(Bookkeeping.from_json(record)))
                runner.record_population(sweep_dir, result["key"], result["curves"], write_trials)
                if result["plan"] is not None and str(group) not in plans:  # the first population's
                    plans[str(group)] = result["plan"]
                    runner.record_plans(sweep_dir, plans)
                on_progress(steps, float("nan"))
    finally:
        for gen in pending:
            ray.cancel(gen, force=False)
        if pending:
            time.sleep(WAIT_S)  # let the cancelled tasks stop before the driver leaves


def _unscheduled(ray: Any, opts: Any, pending: dict, sweep_dir: Path) -> None:
    """No task has started within ``--ray-timeout`` of submission: the tasks cancelled (none ran,
    so the sweep is as checkpointed), the connection shut down, and one line saying what each task
    asks for and what the cluster has free."""
    ask = _amount(TASK_CPUS, "CPU") + (f" and {_amount(opts.ray_gpus, 'GPU')}" if opts.ray_gpus else "")
    try:
        free, total = ray.available_resources(), ray.cluster_resources()
        has = ", ".join(f"{k} {free.get(k, 0.0):g} of {total.get(k, 0.0):g}" for k in ("CPU", "GPU")
                        if k == "CPU" or opts.ray_gpus)
        has = f"; free now: {has}"
    except Exception:  # noqa: BLE001 - the line is the same without the snapshot
        has = ""
    for gen in pending:
        ray.cancel(gen, force=False)
    pending.clear()
    _disconnect(ray)
    raise PipelineError(f"--ray-timeout {opts.ray_timeout:g}: no population's Ray task started on "
                        f"{_where(opts.ray_address)} within {opts.ray_timeout:g} s (each asks for {ask}{has}); "
                        f"continue the sweep with the same command and --sweep-dir {sweep_dir}")
