"""``log=mlflow``: runs in an MLflow tracking store, by explicit run ids (``MlflowClient``).

The store is ``log.mlflow_uri`` (the config's ``mlflow_uri``), else ``MLFLOW_TRACKING_URI``, else
``sqlite:///mlruns.db`` in the current directory: one store shared by every run and sweep started
there (MLflow 3 refuses its old file store unless ``MLFLOW_ALLOW_FILE_STORE=true``). The experiment
is the pipeline's experiment name; a run is an MLflow run named after its folder, with the
flattened config as params and every metric with its step. A sweep is a parent run (tag
``pipeline.sweep_dir``) with one nested run per trial (tag ``mlflow.parentRunId``). No fluent,
process-wide active run is used, so the trials of a population, stepped together, never collide.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import PipelineError, first_line
from pipeline.hooks import RunInfo
from pipeline.track.tracker_base import Tracker, TrackerFailed, flat_config, need

DEFAULT_URI = "sqlite:///mlruns.db"
BATCH = 1000  # MLflow's limit of metrics per log_batch
PARAM_CHARS = 6000  # MLflow's limit of a param value's length

_clients: dict[tuple[str, str], Any] = {}  # (cwd, uri) -> MlflowClient: a store is opened (and migrated) once
_parents: dict[tuple[str, str], str] = {}  # (uri, sweep folder) -> the sweep's parent run id
_lock = threading.Lock()


def tracking_uri(configured: str) -> str:
    """The store's URI; the default is mlruns.db of the current folder, as an absolute path."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path.cwd() / DEFAULT_URI.removeprefix('sqlite:///')}"


def reach(uri: str) -> None:
    """A tracking server answers at all (any HTTP status): MLflow itself would retry for minutes."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10):
            pass
    except urllib.error.HTTPError:
        pass  # a server is there; MLflow's own calls say what it refuses
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackerFailed(f"log=mlflow: no MLflow server at {uri} ({reason})") from exc


def client(uri: str) -> Any:
    """The store at ``uri``, opened once per process; its failure is one line naming the URI."""
    key = (os.getcwd(), uri)  # a relative sqlite path is relative to the current folder
    with _lock:
        if key in _clients:
            return _clients[key]
        need("mlflow", "mlflow")
        from mlflow import MlflowClient

        if uri.startswith(("http://", "https://")):
            reach(uri)
        try:
            opened = MlflowClient(tracking_uri=uri)
            opened.search_experiments(max_results=1)  # opens (or creates) the store now
        except Exception as exc:  # MLflow's error, of whichever type: the line names the URI
            raise TrackerFailed(f"log=mlflow: cannot use tracking URI {uri!r}: {first_line(exc)[:300]}") from exc
        _clients[key] = opened
        return opened


def experiment_id(store: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = store.get_experiment_by_name(name)
    if found is None:
        try:
            return store.create_experiment(name)
        except MlflowException:  # another process made it first
            found = store.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise PipelineError(f"log=mlflow: experiment '{name}' is deleted in {store.tracking_uri}; restore it "
                            "(mlflow experiments restore) or delete it for good (mlflow gc)")
    return found.experiment_id


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_runs(store: Any, experiment: str, tags: dict[str, str]) -> list[Any]:
    """The runs of ``experiment`` with all of ``tags``, oldest first."""
    where = " and ".join(f"tags.`{k}` = '{_quoted(v)}'" for k, v in tags.items())
    runs = store.search_runs([experiment], filter_string=where, max_results=1000)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def sweep_parent(store: Any, uri: str, experiment: str, sweep_dir: Path, swept: list[str]) -> str:
    """The sweep's parent run: found by its folder, else made. Two processes that make one each at
    once (Ray) agree on the oldest, and the other deletes its own."""
    key = (uri, str(sweep_dir))
    with _lock:
        if key in _parents:
            return _parents[key]
        tags = {"pipeline.sweep_dir": str(sweep_dir), "pipeline.role": "sweep"}
        found = find_runs(store, experiment, tags)
        if found:
            parent = found[0].info.run_id
        else:
            made = store.create_run(experiment, run_name=sweep_dir.name,
                                    tags=tags | {"pipeline.swept": ",".join(swept)}).info.run_id
            parent = find_runs(store, experiment, tags)[0].info.run_id
            if parent != made:
                store.delete_run(made)
        _parents[key] = parent
        return parent


def params_of(run: RunInfo) -> dict[str, str]:
    return {k: str(v)[:PARAM_CHARS] for k, v in flat_config(run.config).items()}


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg: Config | None = None):
        self.pending: list[Any] = []
        self.parent: str | None = None
        super().__init__(cfg)

    def check(self) -> None:
        need("mlflow", "mlflow")
        if self.cfg is not None:  # the whole config is known: open the store before the run folder exists
            client(tracking_uri(self.cfg.mlflow_uri))

    def start(self, run: RunInfo) -> None:
        from mlflow.entities import Param, RunStatus, RunTag

        self.uri = tracking_uri(str(run.config.get("mlflow_uri", "")))
        self.store = store = client(self.uri)
        experiment = experiment_id(store, run.experiment or "Default")
        folder = Path(run.run_dir).resolve()
        tags = {"pipeline.run_dir": str(folder)}
        if run.sweep_dir is not None:
            sweep_dir = Path(run.sweep_dir).resolve()
            parent = sweep_parent(store, self.uri, experiment, sweep_dir, sorted(run.swept or {}))
            tags = {"pipeline.sweep_dir": str(sweep_dir), "pipeline.trial": str(run.trial)}
            name, again = f"{sweep_dir.name}-trial-{run.trial}", True
            extra = {"mlflow.parentRunId": parent, "pipeline.role": "trial"}
            store.update_run(parent, status="RUNNING")  # the last trial to stop finishes it again
            self.parent = parent
        else:
            name, again, extra = folder.name, run.first_step > 0, {"pipeline.role": "run"}
        earlier = find_runs(store, experiment, tags) if again else []
        if earlier:  # resumed: the same MLflow run goes on
            self.run_id = earlier[-1].info.run_id
            store.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            logged = earlier[-1].data.params
        else:
            self.run_id = store.create_run(experiment, run_name=name, tags=tags | extra).info.run_id
            logged = {}
        # Params are write-once in MLflow: a resumed run keeps what it logged (extended steps stay as first set).
        params = [Param(k, v) for k, v in params_of(run).items() if k not in logged]
        swept = [RunTag(f"swept.{k}", str(v)) for k, v in (run.swept or {}).items()]
        for i in range(0, max(len(params), 1), 100):  # MLflow's limit of params per batch
            store.log_batch(self.run_id, params=params[i:i + 100], tags=swept if i == 0 else [])

    def write(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(tag, value, now, step) for tag, value in values.items())
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.store.log_batch(self.run_id, metrics=batch)

    def stop(self, finished: bool) -> None:
        self.flush()
        self.store.set_terminated(self.run_id, "FINISHED" if finished else "KILLED")
        if self.parent is not None:
            self.store.set_terminated(self.parent, "FINISHED")
