"""A user's experiment file that gets something wrong: one line naming the file and the symbol, exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.extending.conftest import QUICK

HEADER = """
from dataclasses import dataclass
import jax.numpy as jnp
from flax import nnx
import pipeline
from pipeline import Config, ModelConfig
"""

# A model for flat vectors of exactly 5 features: the digits' 8x8 images do not fit it.
FIVE_FEATURES = """
@dataclass(frozen=True)
class FiveConfig(ModelConfig):
    name: str = "five"

class Five(nnx.Module):
    def __init__(self, out, rngs):
        self.linear = nnx.Linear(5, out, rngs=rngs)
    def __call__(self, x):
        return self.linear(x)

pipeline.register_model("five", FiveConfig, lambda cfg, shape, out, rngs: Five(out, rngs))

def config():
    return Config(model=FiveConfig())
"""

# A model that ignores the class count: 3 outputs for 10 classes.
THREE_OUTPUTS = """
@dataclass(frozen=True)
class ThreeConfig(ModelConfig):
    name: str = "three"

class Three(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(64, 3, rngs=rngs)
    def __call__(self, x):
        return self.linear(x.reshape(x.shape[0], -1))

pipeline.register_model("three", ThreeConfig, lambda cfg, shape, out, rngs: Three(rngs))

def config():
    return Config(model=ThreeConfig())
"""

LIST_FIELD = """
@dataclass(frozen=True)
class ListConfig(ModelConfig):
    name: str = "listy"
    widths: list = None

pipeline.register_model("listy", ListConfig, lambda cfg, shape, out, rngs: None)

def config():
    return Config()
"""

WRONG_NAME = """
@dataclass(frozen=True)
class NamedConfig(ModelConfig):
    width: int = 3

pipeline.register_model("named", NamedConfig, lambda cfg, shape, out, rngs: None)

def config():
    return Config()
"""

TAKES_MLP = """
@dataclass(frozen=True)
class MineConfig(ModelConfig):
    name: str = "mlp"

pipeline.register_model("mlp", MineConfig, lambda cfg, shape, out, rngs: None)

def config():
    return Config()
"""


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(HEADER) + textwrap.dedent(body))
    return path


def one_error(*args: str) -> str:
    r = run_cli(*args)
    assert r.code == 2, (r.code, r.err)
    assert r.err.count("\n") == 1 and r.err.startswith("error: ") and "Traceback" not in r.err, r.err
    return r.err.strip()


@pytest.mark.parametrize("name, body, expected", [
    ("five", FIVE_FEATURES, ["five.py: model 'five' cannot take dataset 'digits' features of shape (8, 8) "
                             "(float32)"]),
    ("three", THREE_OUTPUTS, ["three.py: model 'three' returns outputs of shape (2, 3) for a batch of 2 from "
                              "dataset 'digits'; objective 'classification' expects (2, 10)"]),
    ("listy", LIST_FIELD, ["listy.py: model 'listy': field ListConfig.widths has type", "overrides cannot read"]),
    ("named", WRONG_NAME, ["named.py: model 'named': NamedConfig.name defaults to ''",
                           "declare `name: str = 'named'`"]),
    ("takes_mlp", TAKES_MLP, ["takes_mlp.py: model 'mlp' is registered twice (first in",
                              "pipeline/models/mlp.py)"]),
])
def test_a_broken_user_model_is_one_line_naming_its_file(home, name, body, expected):
    path = write(home, name, body)
    line = one_error("train", str(path), *QUICK)
    for part in expected:
        assert part in line, line
    assert str(home) in line


def test_an_objective_that_does_not_fit_the_task(home):
    line = one_error("train", "digits_mlp", "objective=regression", *QUICK)
    assert line == ("error: objective 'regression' does not fit dataset 'digits' (classification); "
                    "it is for regression data: import it again with --task regression if its labels are numbers, "
                    "or train a classification experiment on it")
    line = one_error("train", "digits_mlp", "objective=hinge", *QUICK)
    assert "unknown objective 'hinge'; registered objectives: classification, " in line
    # the built-ins, and whatever objectives this process's experiment files registered before
    assert all(f" {name}" in line for name in ("language_modeling", "regression"))


def test_a_best_metric_the_objective_does_not_have(home):
    line = one_error("train", "digits_mlp", "best_metric=r2", *QUICK)
    assert line == ("error: bad value for 'best_metric': 'r2' is not a metric of objective 'classification' "
                    "(loss, accuracy)")


def test_an_unknown_model_lists_the_registered_ones(home):
    line = one_error("train", "digits_mlp", "model.name=resnext", *QUICK)
    assert "bad value for 'model.name': unknown model 'resnext'; registered models: cnn, " in line
    assert ", mlp, " in line and ", resnet, " in line and ", transformer" in line and line.endswith("vit")


def test_the_same_file_loaded_twice_is_no_clash(home):
    path = write(home, "five_again", FIVE_FEATURES.replace('"five"', '"five2"'))
    for _ in range(2):  # a sweep or a notebook loads an experiment file more than once
        assert "cannot take dataset" in one_error("train", str(path), *QUICK)


# A field marked traced() although the model keeps it as a static attribute (nnx.Dropout's rate).
MISMARKED = """
from pipeline import traced

@dataclass(frozen=True)
class DropConfig(ModelConfig):
    name: str = "drop"
    dropout: float = traced(0.1)

class Drop(nnx.Module):
    def __init__(self, cfg, rngs):
        self.linear = nnx.Linear(64, 10, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
    def __call__(self, x):
        return self.drop(self.linear(x.reshape(x.shape[0], -1)))

pipeline.register_model("drop", DropConfig, lambda cfg, shape, out, rngs: Drop(cfg, rngs))

def config():
    return Config(model=DropConfig(), steps=20, eval_every=10)
"""


def test_a_traced_field_that_changes_the_program_is_refused_before_training(home):
    path = write(home, "drop", MISMARKED)
    sweeps = home / "sweeps"
    before = sorted(sweeps.iterdir()) if sweeps.exists() else []
    line = one_error("sweep", str(path), "model.dropout=choice(0.1;0.2)", "--no-progress")
    assert "trial 1 (model.dropout=0.2): a field marked traced changes the model's structure" in line
    assert (sorted(sweeps.iterdir()) if sweeps.exists() else []) == before  # refused before any folder
    # Without the mark, the two rates are two programs, and the sweep runs them one after another.
    path.write_text(path.read_text().replace("traced(0.1)", "0.1"))
    r = run_cli("sweep", str(path), "model.dropout=choice(0.1;0.2)", "--no-progress", "--json")
    assert r.code == 0, r.err
    assert '"groups": 2' in r.out.strip().splitlines()[-1].replace(" ", "").replace('"groups":2', '"groups": 2')
