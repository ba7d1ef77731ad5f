"""The trackers against the real libraries (MLflow 3, W&B, TensorBoard): what each stores equals what
the run recorded in metrics.parquet, a sweep's trials are told apart, and a bad store is one line.

A sweep's trials are trained here by ``pipeline.fit`` with the trackers as hooks, given the
``RunInfo`` a sweep's population gives them (sweep folder, trial id, swept values); the test through
``pipeline sweep`` checks the same against trials.parquet once the population passes those fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.hooks import Hook, Hooks, RunInfo
from tests.conftest import records_under, run_cli

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")
pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from pipeline.track.mlflow_tracker import MLflowTracker  # noqa: E402  (after the skips)
from pipeline.track.tensorboard_tracker import TensorBoardTracker  # noqa: E402
from pipeline.track.wandb_tracker import WandbTracker, wandb_mode  # noqa: E402

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

QUICK = ["steps=20", "eval_every=10", "batch_size=32", "model.hidden=16", "plot=false"]
POINTS = [{"optimizer.learning_rate": lr, "seed": seed} for lr in (0.01, 0.1) for seed in (0, 1)]


class AsTrial(Hook):
    """Hooks told that their run is trial ``trial`` of ``sweep_dir``, as a sweep's population tells them."""

    def __init__(self, hooks: list[Hook], sweep_dir: Path, trial: int, swept: dict):
        self.inner, self.sweep_dir, self.trial, self.swept = Hooks(hooks), sweep_dir, trial, swept

    def on_start(self, run: RunInfo) -> None:
        self.inner.on_start(dataclasses.replace(run, sweep_dir=self.sweep_dir, trial=self.trial, swept=self.swept))

    def after_call(self, steps, metrics):
        self.inner.after_call(steps, metrics)

    def on_eval(self, step, metrics):
        self.inner.on_eval(step, metrics)

    def on_end(self, summary):
        self.inner.on_end(summary)

    def close(self):
        self.inner.close()


def recorded(run_dir: Path) -> dict[tuple[str, int], float]:
    """metrics.parquet as {("split/name", step): value}."""
    t = pq.read_table(run_dir / "metrics.parquet").to_pydict()
    return {(f"{s}/{n}", int(st)): v for s, n, st, v in zip(t["split"], t["name"], t["step"], t["value"])}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Four trials (2 learning rates x 2 seeds) of one sweep, each with all three trackers; W&B in its
    default mode (offline: no key here), MLflow in its default store (mlruns.db in the current folder)."""
    root = tmp_path_factory.mktemp("trackers")
    with records_under(root), pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_API_KEY"):
            mp.delenv(name, raising=False)
        mp.setenv("HOME", str(root))  # no `wandb login` of this machine's user
        mp.setenv("NETRC", str(root / "no-netrc"))
        sweep_dir = root / "sweeps" / "digits_mlp-demo"
        sweep_dir.mkdir(parents=True)
        results = []
        for trial, point in enumerate(POINTS):
            hooks = [AsTrial([MLflowTracker(), WandbTracker(), TensorBoardTracker()], sweep_dir, trial, point)]
            overrides = QUICK + [f"{k}={v}" for k, v in point.items()]
            results.append(pipeline.fit("digits_mlp", overrides=overrides, hooks=hooks,
                                        run_dir=root / "runs" / f"trial-{trial}"))
        yield root, sweep_dir, results


def test_mlflow_nests_every_trial_under_the_sweep_with_its_params_and_metrics(swept):
    root, sweep_dir, results = swept
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("digits_mlp").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "sweep"]
    assert len(parents) == 1 and parents[0].data.tags["pipeline.sweep_dir"] == str(sweep_dir.resolve())
    assert parents[0].info.status == "FINISHED"
    trials = {int(r.data.tags["pipeline.trial"]): r for r in runs if r.data.tags.get("pipeline.role") == "trial"}
    assert sorted(trials) == [0, 1, 2, 3]
    for trial, result in enumerate(results):
        run = trials[trial]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and run.info.status == "FINISHED"
        assert float(run.data.params["optimizer.learning_rate"]) == POINTS[trial]["optimizer.learning_rate"]
        assert int(run.data.params["seed"]) == POINTS[trial]["seed"] and run.data.params["steps"] == "20"
        for tag, value in result.summary["metrics"].items():  # the final metrics, as the run recorded them
            assert run.data.metrics[tag] == pytest.approx(value, rel=1e-12)
        table = recorded(result.run_dir)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 21))
        assert all(m.value == pytest.approx(table[("train/loss", m.step)], rel=1e-12) for m in history)
        rates = client.get_metric_history(run.info.run_id, "train/learning_rate")
        assert [m.value for m in rates] == pytest.approx([POINTS[trial]["optimizer.learning_rate"]] * 20, rel=1e-6)


def wandb_records(path: Path) -> list:
    """The records of an offline ``run-ID.wandb`` file: W&B's log format (LevelDB's, 32 KiB blocks of
    chunks with a 7-byte header) holding its own protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_writes_one_offline_run_per_trial_with_its_own_history(swept):
    _, sweep_dir, results = swept
    ids = set()
    for trial, result in enumerate(results):
        files = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) == 1  # offline (no key, no login here), one run for this trial
        records = wandb_records(files[0])
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        ids.add(run.run_id)
        assert run.run_group == sweep_dir.name and run.display_name.endswith(f"trial-{trial}")
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        assert config["optimizer"]["learning_rate"] == POINTS[trial]["optimizer.learning_rate"]
        rows = {}
        for r in records:
            if r.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                rows[row["_step"]] = row
        assert sorted(rows) == list(range(1, 21))
        for (tag, step), value in recorded(result.run_dir).items():
            assert rows[step][tag] == pytest.approx(value, rel=1e-12), (trial, tag, step)
        assert [rows[s]["train/learning_rate"] for s in range(1, 21)] == pytest.approx(
            [POINTS[trial]["optimizer.learning_rate"]] * 20, rel=1e-6)
    assert len(ids) == 4


def hparams_records(folder: Path) -> tuple[object, dict]:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    events = event_accumulator.EventAccumulator(str(folder)).Reload()
    content = events.PluginTagToContent("hparams")
    return events, {tag: HParamsPluginData.FromString(data) for tag, data in content.items()}


def test_tensorboard_shows_the_sweep_as_one_hparams_table_with_the_learning_rate(swept):
    _, _, results = swept
    for trial, result in enumerate(results):
        events, hparams = hparams_records(result.run_dir / "tensorboard")
        start = hparams["_hparams_/session_start_info"].session_start_info
        assert start.hparams["optimizer.learning_rate"].number_value == POINTS[trial]["optimizer.learning_rate"]
        assert start.hparams["seed"].number_value == POINTS[trial]["seed"]
        experiment = hparams["_hparams_/experiment"].experiment
        assert [h.name for h in experiment.hparam_infos] == ["optimizer.learning_rate", "seed"]
        metrics = {m.name.tag for m in experiment.metric_infos}
        assert set(result.summary["metrics"]) <= metrics  # the final metrics are the table's columns
        assert hparams["_hparams_/session_end_info"].session_end_info.status == 1  # STATUS_SUCCESS
        for tag, value in result.summary["metrics"].items():
            assert events.Scalars(tag)[-1].value == pytest.approx(value, rel=1e-6)
        rates = events.Scalars("train/learning_rate")
        assert [e.step for e in rates] == list(range(1, 21))
        assert [e.value for e in rates] == pytest.approx([POINTS[trial]["optimizer.learning_rate"]] * 20, rel=1e-6)


def test_the_learning_rate_follows_the_schedule_and_gradient_accumulation(workdir):
    """Cosine over 20 steps with grad_accum=2: 10 updates, step s trains at count (s - 1) // 2."""
    result = pipeline.fit("digits_mlp", overrides=QUICK + ["log=tensorboard", "optimizer.schedule=cosine",
                                                           "optimizer.learning_rate=0.05", "grad_accum=2"],
                          run_dir=workdir / "runs" / "cosine")
    events = event_accumulator.EventAccumulator(str(result.run_dir / "tensorboard")).Reload()
    rates = {e.step: e.value for e in events.Scalars("train/learning_rate")}
    expected = {s: 0.05 * 0.5 * (1 + math.cos(math.pi * ((s - 1) // 2) / 10)) for s in range(1, 21)}
    assert sorted(rates) == list(expected)
    assert [rates[s] for s in expected] == pytest.approx(list(expected.values()), rel=1e-5, abs=1e-9)


def records(run_dir: Path) -> dict[Path, bytes]:
    """Every file of a run folder but its lock (which names the last command that held it)."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("uri, cause", [
    ("nosuch://x", "log=mlflow: cannot use tracking URI 'nosuch://x': "),
    ("http://127.0.0.1:9", "log=mlflow: no MLflow server at http://127.0.0.1:9 ("),
])
def test_a_bad_mlflow_store_is_one_line_and_leaves_the_run_as_it_was(cli, workdir, uri, cause):
    run_dir = workdir / "runs" / "kept"
    first = cli("train", "digits_mlp", *QUICK, "--run-dir", str(run_dir), "--no-progress")
    assert first.code == 0, first.err
    before = records(run_dir)
    r = cli("train", "digits_mlp", *QUICK, "steps=40", "log=mlflow", f"log.mlflow_uri={uri}",
            "--run-dir", str(run_dir), "--no-progress")
    assert r.code == 2 and r.err.startswith("error: " + cause) and r.err.count("\n") == 1, r.err
    assert records(run_dir) == before  # nothing touched
    fresh = workdir / "runs" / "never"
    r = cli("train", "digits_mlp", *QUICK, "log=mlflow", f"log.mlflow_uri={uri}", "--run-dir", str(fresh),
            "--no-progress")
    assert r.code == 2 and not fresh.exists()  # failed before its run folder was made


def test_wandb_is_offline_unless_the_environment_says_otherwise(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # wandb reads WANDB_MODE itself


def test_a_sweep_through_the_cli_is_one_parent_run_with_a_nested_run_per_trial(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with records_under(tmp_path):
        r = run_cli("sweep", "digits_mlp", "optimizer.learning_rate=choice(0.01;0.1)", "seed=choice(0;1)",
                    "log=mlflow", f"log.mlflow_uri={uri}", *QUICK, "--no-progress", "--json")
    assert r.code == 0, r.err
    sweep_dir = Path(json.loads(r.out.strip().splitlines()[-1])["sweep_dir"])
    rows = {row["trial"]: row for row in pq.read_table(sweep_dir / "trials.parquet").to_pylist()}
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("digits_mlp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline.role") == "sweep"]
    assert len(parents) == 1
    trials = {int(r.data.tags["pipeline.trial"]): r for r in runs if r.data.tags.get("pipeline.role") == "trial"}
    assert sorted(trials) == sorted(rows) == [0, 1, 2, 3]
    for trial, row in rows.items():
        run = trials[trial]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert float(run.data.params["optimizer.learning_rate"]) == row["optimizer.learning_rate"]
        assert run.data.metrics["test/accuracy"] == pytest.approx(row["final_test_accuracy"], rel=1e-12)
        assert run.data.metrics["val/accuracy"] == pytest.approx(row["final_val_accuracy"], rel=1e-12)
    assert np.isfinite([r.data.metrics["train/loss"] for r in trials.values()]).all()
