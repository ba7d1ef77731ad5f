"""Hooks, trackers and the profiler: called between compiled calls, with what the run records."""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.config import Config
from pipeline.models import MLPConfig

FAST = Config(data="digits", steps=120, eval_every=40, batch_size=32, plot=False, model=MLPConfig(hidden=(16,)))


class Recorder(pipeline.Hook):
    def __init__(self):
        self.events = []

    def on_start(self, run):
        self.events.append(("start", run.total_steps, run.first_step))

    def after_call(self, steps, metrics):
        self.events.append(("call", steps.tolist(), metrics["loss"].tolist()))

    def on_eval(self, step, metrics):
        self.events.append(("eval", step, metrics))

    def on_checkpoint(self, step, best):
        self.events.append(("checkpoint", step, best))

    def on_end(self, summary):
        self.events.append(("end", summary))

    def close(self):
        self.events.append(("close",))


def table(run_dir) -> dict:
    t = pq.read_table(run_dir / "metrics.parquet").to_pydict()
    return {(s, n, int(st)): v for s, n, st, v in zip(t["split"], t["name"], t["step"], t["value"])}


def test_a_hook_sees_every_call_and_evaluation_in_order(workdir):
    hook = Recorder()
    result = pipeline.fit(FAST, hooks=[hook], run_dir=workdir / "runs" / "hooked")
    kinds = [e[0] for e in hook.events]
    assert kinds[0] == "start" and hook.events[0][1:] == (120, 0)
    assert kinds[-2:] == ["end", "close"] and hook.events[-2][1] == result.summary
    calls = [e for e in hook.events if e[0] == "call"]
    assert sum((c[1] for c in calls), []) == list(range(1, 121))  # every step once, in order
    evals = [e for e in hook.events if e[0] == "eval"]
    assert [e[1] for e in evals] == [40, 80, 120]
    recorded = table(result.run_dir)
    for _, step, metrics in evals:  # what the hook saw is what metrics.parquet holds
        for name, value in metrics["test"].items():
            assert recorded[("test", name, step)] == pytest.approx(value)
    for _, steps, losses in calls:
        assert [recorded[("train", "loss", s)] for s in steps] == pytest.approx(losses)
    assert ("checkpoint", 120, False) in hook.events or ("checkpoint", 120, True) in hook.events
    # each evaluation is seen after the calls that led to it, and before the next call
    positions = {e[1]: i for i, e in enumerate(hook.events) if e[0] == "eval"}
    last_steps = {c[1][-1]: i for i, c in enumerate(hook.events) if c[0] == "call"}
    assert all(last_steps[s] < positions[s] for s in positions)


def test_tensorboard_scalars_equal_the_metrics_table(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = pipeline.fit(FAST, overrides=["log=tensorboard"], run_dir=workdir / "runs" / "tb")
    events = EventAccumulator(str(result.run_dir / "tensorboard")).Reload()
    recorded = table(result.run_dir)
    tags = set(events.Tags()["scalars"])
    assert tags == {f"{s}/{n}" for s, n, _ in recorded} | {"train/learning_rate"}  # the rate: trackers only
    for tag in tags - {"train/learning_rate"}:
        split, name = tag.split("/")
        for event in events.Scalars(tag):
            assert event.value == pytest.approx(recorded[(split, name, event.step)], rel=1e-6)
    assert len(events.Scalars("train/loss")) == 120


def test_a_profile_trace_of_the_asked_steps(workdir):
    result = pipeline.fit(FAST, overrides=["profile=40:20", "steps_per_call=20"], run_dir=workdir / "runs" / "prof")
    traces = list((result.run_dir / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_missing_tracker_extra_is_one_line(cli, tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    r = cli("train", "digits_mlp", f"log={tracker}", "steps=10", "--no-progress")
    expected = f"error: log={tracker} needs the '{tracker}' extra: pip install 'pipeline[{tracker}]'\n"
    assert r.code == 2 and r.err == expected


def test_bad_log_and_profile_values(cli):
    r = cli("train", "digits_mlp", "log=tensorbored", "--no-progress")
    assert r.code == 2 and "bad value for 'log': unknown tracker 'tensorbored'" in r.err
    r = cli("train", "digits_mlp", "profile=10", "--no-progress")
    assert r.code == 2 and "bad value for 'profile': '10' is not START:STEPS" in r.err


def test_an_experiment_files_hooks_run(cli, workdir):
    path = workdir / "hooked.py"
    path.write_text(textwrap.dedent(f"""
        import pipeline
        from pipeline.config import Config
        from pipeline.models import MLPConfig

        class Count(pipeline.Hook):
            def on_eval(self, step, metrics):
                with open({str(workdir / 'evals.txt')!r}, "a") as f:
                    f.write(f"{{step}} {{metrics['test']['accuracy']:.6f}}\\n")

        def config():
            return Config(data="digits", steps=60, eval_every=20, plot=False, model=MLPConfig(hidden=(8,)))

        def hooks():
            return [Count()]
    """))
    r = cli("train", str(path), "--no-progress", "--json")
    assert r.code == 0, r.err
    lines = (workdir / "evals.txt").read_text().split()
    assert lines[0::2] == ["20", "40", "60"]
    final = __import__("json").loads(r.out.strip().splitlines()[-1])["metrics"]["test/accuracy"]
    assert float(lines[-1]) == pytest.approx(final, abs=1e-6)
    assert np.isfinite([float(v) for v in lines[1::2]]).all()
