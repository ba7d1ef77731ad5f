"""``pipeline.fit`` and ``pipeline.load_run`` from Python: arrays, a DataFrame, a store name; errors raise."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import pipeline
from pipeline.config import Config
from pipeline.data import Store

FAST = ["steps=200", "eval_every=100", "model.hidden=32"]


def accuracy(model, x, y) -> float:
    return float((np.asarray(model(x)).argmax(-1) == y).mean())


@pytest.fixture(scope="module")
def digits(home):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_fit_on_arrays_returns_the_model_and_load_run_gives_it_back(home, digits):
    x, y, x_test, y_test = digits
    result = pipeline.fit("digits_mlp", data=(x, y, x_test, y_test), overrides=FAST, run_dir=home / "runs" / "arrays")
    assert result.summary == json.loads((result.run_dir / "summary.json").read_text())
    expected = result.summary["metrics"]["test/accuracy"]
    assert expected > 0.8
    # The returned model, and the one loaded back, take features as given: the stored test split is x_test.
    assert accuracy(result.model, x_test, y_test) == pytest.approx(expected, abs=1e-9)
    loaded = pipeline.load_run(result.run_dir, which="latest")
    assert accuracy(loaded, x_test, y_test) == pytest.approx(expected, abs=1e-9)
    np.testing.assert_array_equal(np.asarray(loaded(x_test[:5])), np.asarray(result.model(x_test[:5])))
    best = pipeline.load_run(result.run_dir)  # which="best": the checkpoint the run selected
    assert accuracy(best, x_test, y_test) == pytest.approx(result.summary["best"]["metrics"]["test/accuracy"],
                                                           abs=1e-9)
    # The same arrays again are the same dataset, imported once.
    again = pipeline.fit("digits_mlp", data=(x, y, x_test, y_test), overrides={"steps": 100, "eval_every": 100,
                                                                              "model.hidden": (8,)})
    assert again.summary["data"] == result.summary["data"] and again.summary["data"].startswith("arrays-")


def test_fit_on_a_dataframe_with_a_target_column(home, digits):
    x, y, _, _ = digits
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)]).assign(digit=[f"d{v}" for v in y])
    result = pipeline.fit(Config(), data=frame, target="digit", overrides=FAST)
    info = Store().info(result.summary["data"])
    assert info.class_names == [f"d{v}" for v in range(10)] and info.feature_shape == (64,)
    test = Store().read(result.summary["data"], "test")
    assert accuracy(result.model, test.x, test.y) == pytest.approx(result.summary["metrics"]["test/accuracy"],
                                                                   abs=1e-9)


def test_breast_cancer_with_default_settings_comes_close_to_scikit_learn(home):
    """Raw-scale tabular features (0.001 to 4000): standardized on the device by default."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    reference = make_pipeline(StandardScaler(), MLPClassifier(random_state=0, max_iter=1000))
    reference_accuracy = reference.fit(x_train, y_train).score(x_test, y_test)
    # Every training row, as scikit-learn trains on (no validation carve): the comparison is of the model.
    result = pipeline.fit(Config(), data=(x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test),
                          overrides=["data.validation_fraction=0"])
    ours = result.summary["metrics"]["test/accuracy"]
    assert ours >= reference_accuracy - 0.02, (ours, reference_accuracy)
    assert accuracy(result.model, x_test.astype(np.float32), y_test) == pytest.approx(ours, abs=1e-9)


@pytest.mark.parametrize("call, message", [
    (lambda: pipeline.fit("no_such_experiment"), "unknown experiment 'no_such_experiment'"),
    (lambda: pipeline.fit(Config(), overrides=["model.hiden=3"]), "unknown config key 'model.hiden'"),
    (lambda: pipeline.fit(Config(), data=pd.DataFrame({"a": [1.0]})), "needs target=COLUMN"),
    (lambda: pipeline.fit(Config(), data=(np.zeros((3, 2)),)), "takes (x, y) or (x, y, x_test, y_test)"),
    (lambda: pipeline.load_run("/nonexistent/run"), "is not a run folder"),
    (lambda: pipeline.fit(Config(objective="regression"), overrides=FAST),
     "objective 'regression' does not fit dataset 'digits' (classification)"),
])
def test_mistakes_raise_the_projects_error_with_one_line(home, call, message):
    runs = home / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    with pytest.raises(pipeline.PipelineError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before  # no empty run folder left behind
