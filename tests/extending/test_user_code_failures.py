"""User code that fails, as a user meets it on the command line: one line naming the user's file, exit 2.

An objective whose ``finalize`` leaves out a metric it declares and a ``build()`` that returns no
module are refused before anything is compiled or recorded; a registration that takes a built-in
name names the user's file whatever was imported first; a hook that raises stops the run at a call
boundary with a checkpoint saved, from which ``--resume`` goes on.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_subprocess
from tests.sweep.conftest import pipeline as run_cli

HEADER = """
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

import pipeline
from pipeline import Config, ModelConfig, Objective
from pipeline.models import MLPConfig
"""

# The metric sums of the focal example, and a finalize that forgets the best metric, "error".
NO_BEST_METRIC = """
def loss(logits, labels, hparams):
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1).mean()
    return ce, {"loss": ce}

def sums(logits, labels, mask):
    wrong = logits.argmax(-1) != labels
    return {"wrong": (wrong * mask).sum(), "count": mask.sum()}

def finalize(s):
    return {"accuracy": 1.0 - s["wrong"] / s["count"]}

pipeline.register_objective(Objective(name="forgetful", loss=loss, sums=sums, finalize=finalize,
                                      higher_is_better={"accuracy": True, "error": False}, best="error"))

def config():
    return Config(data="digits", objective="forgetful", model=MLPConfig(hidden=(8,)), steps=20, eval_every=10)
"""

# A build function that forgets to return the model.
BUILD_RETURNS_NONE = """
@dataclass(frozen=True)
class SilentConfig(ModelConfig):
    name: str = "silent"

class Silent(nnx.Module):
    def __init__(self, out, rngs):
        self.linear = nnx.Linear(64, out, rngs=rngs)
    def __call__(self, x):
        return self.linear(x.reshape(x.shape[0], -1))

def build(cfg, shape, out, rngs):
    model = Silent(out, rngs)

pipeline.register_model("silent", SilentConfig, build)

def config():
    return Config(data="digits", model=SilentConfig(), steps=20, eval_every=10)
"""

# Registers built-in names before anything has looked one up (the built-ins are not loaded yet).
TAKES_MLP = """
@dataclass(frozen=True)
class MineConfig(ModelConfig):
    name: str = "mlp"

pipeline.register_model("mlp", MineConfig, lambda cfg, shape, out, rngs: None)

def config():
    return Config()
"""

TAKES_CLASSIFICATION = """
pipeline.register_objective(Objective("classification", None, None, None, {"accuracy": True}, "accuracy"))

def config():
    return Config()
"""

# A hook that raises after step 20 while the marker file exists; it notes each close().
FAILING_HOOK = """
MARKER = {marker!r}
CLOSED = {closed!r}

class Boom(pipeline.Hook):
    def after_call(self, steps, metrics):
        if steps[-1] >= 20 and os.path.exists(MARKER):
            raise ValueError(f"boom at step {{steps[-1]}}")

    def close(self):
        with open(CLOSED, "a") as f:
            f.write("closed\\n")

def config():
    return Config(data="digits", model=MLPConfig(hidden=(8,)), steps=60, eval_every=20, steps_per_call=10,
                  plot=False)

def hooks():
    return [Boom()]
"""


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(HEADER) + textwrap.dedent(body))
    return path


def one_line(r) -> str:
    """The one error line of a failed command: exit 2, no traceback."""
    assert r.code == 2, (r.code, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("error: ") and "Traceback" not in r.err, r.err
    return r.err.strip()


@pytest.fixture
def runs(home, tmp_path, monkeypatch) -> Path:
    """A runs root of this test's own (the store is the module's): what a refused run left there."""
    root = tmp_path / "runs"
    monkeypatch.setenv("PIPELINE_RUNS", str(root))
    return root


def test_a_finalize_without_its_best_metric_is_refused_before_anything_is_written(tmp_path, runs):
    path = write(tmp_path, "forgetful", NO_BEST_METRIC)
    line = one_line(run_cli("train", str(path), "--no-progress"))
    assert line == (f"error: {path}: objective 'forgetful': its finalize returns no metric 'error' (its best "
                    "metric), which higher_is_better declares; it returns accuracy")
    assert not runs.exists() or not any(runs.iterdir())  # no run folder, so no metrics either
    explicit = tmp_path / "chosen"
    one_line(run_cli("train", str(path), "--no-progress", "--run-dir", str(explicit)))
    assert not explicit.exists()


def test_a_build_that_returns_none_is_one_line_naming_the_family_and_its_file(tmp_path, runs):
    path = write(tmp_path, "silent", BUILD_RETURNS_NONE)
    line = one_line(run_cli("train", str(path), "--no-progress"))
    assert line == f"error: {path}: model 'silent': its build function returned None, not an nnx.Module"
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize("name, body, expected", [
    ("takes_mlp", TAKES_MLP, "model 'mlp' is registered twice (first in {root}/pipeline/models/mlp.py)"),
    ("takes_classification", TAKES_CLASSIFICATION,
     "objective 'classification' is registered twice (first in {root}/pipeline/objectives.py)"),
])
def test_a_built_in_name_registered_again_names_the_users_file(tmp_path, name, body, expected):
    # A fresh process: the user's file registers the name before the built-ins are imported.
    path = write(tmp_path, name, body)
    r = run_subprocess(["train", str(path), "--no-progress"],
                       env={"PIPELINE_STORE": str(tmp_path / "data"), "PIPELINE_RUNS": str(tmp_path / "runs")})
    assert one_line(r) == f"error: {path}: " + expected.format(root=ROOT)


def test_a_failing_hook_stops_the_run_with_a_checkpoint_and_resume_goes_on(tmp_path, runs):
    marker, closed = tmp_path / "fail-now", tmp_path / "closed.txt"
    marker.touch()
    path = write(tmp_path, "boom", FAILING_HOOK.format(marker=str(marker), closed=str(closed)))
    run_dir = tmp_path / "run"
    line = one_line(run_cli("train", str(path), "--no-progress", "--run-dir", str(run_dir)))
    # It failed with the metrics of step 20 while steps 21-30 ran: the run stops at 30, saved.
    assert line == (f"error: {path}: hook Boom failed in after_call: ValueError: boom at step 20; interrupted "
                    f"at step 30; a checkpoint is saved; resume with --run-dir {run_dir} --resume")
    assert (run_dir / "checkpoints" / "30").is_dir()
    assert closed.read_text() == "closed\n"  # the hooks were closed all the same
    marker.unlink()
    r = run_cli("train", str(path), "--no-progress", "--run-dir", str(run_dir), "--resume", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out.strip().splitlines()[-1])["steps"] == 60
    t = pq.read_table(run_dir / "metrics.parquet").to_pydict()
    train = sorted(s for s, split, n in zip(t["step"], t["split"], t["name"]) if split == "train" and n == "loss")
    assert train == list(range(1, 61))  # every step once: none lost, none twice across the stop
    assert closed.read_text() == "closed\nclosed\n"


def test_a_sweep_members_failing_hook_stops_the_sweep_with_its_checkpoint(tmp_path, home, monkeypatch):
    from pipeline.hooks import Hook
    from pipeline.sweep import population_run

    failing = {"on": True}

    class Tracker(Hook):
        def after_call(self, steps, metrics):
            if failing["on"] and steps[-1] >= 20:
                raise RuntimeError("the tracker lost its connection")

    monkeypatch.setattr(population_run, "trackers", lambda text: [Tracker()])
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", "digits_mlp", "seed=range(2)", "model.hidden=8", "steps=60", "eval_every=20", "steps_per_call=10",
            "batch_size=32", "plot=false", "--vmap", "--no-progress", "--sweep-dir", str(sweep_dir)]
    line = one_line(run_cli(*args))
    assert line.startswith(f"error: {__file__}: hook Tracker failed in after_call: RuntimeError: the tracker lost "
                           "its connection; interrupted at step 30 of group 0; a checkpoint is saved; "
                           f"continue the sweep with the same command and --sweep-dir {sweep_dir}"), line
    assert (sweep_dir / "checkpoints" / "g0-c0" / "30").is_dir()
    failing["on"] = False
    r = run_cli(*args, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["status"] == {"done": 2}
