"""The model ``pipeline.fit`` and ``pipeline.load_run`` return, used the Keras way: frames by column name,
``predict``, ``predict_proba``, ``evaluate`` equal to the run's own evaluation, one row, ``history``; and
``fit(data=(train_df, test_df))`` keeping the user's split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import pipeline
from pipeline.config import Config
from pipeline.data import Store
from pipeline.predictor import ModelInputError
from tests.conftest import records_under

FAST = {"steps": 150, "eval_every": 50, "model.hidden": (16,)}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with records_under(tmp_path_factory.mktemp("surface")) as root:
        yield root


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Breast cancer as a frame with text labels, split by the user: train, validation, test."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "label"})
    frame["label"] = bunch.target_names[frame["label"]]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    return frame.iloc[:380], frame.iloc[380:450].reset_index(drop=True), frame.iloc[450:].reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(home, cancer):
    train, validation, test = cancer
    return pipeline.fit(Config(), data=(train, test), validation=validation, target="label", overrides=FAST)


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["label"])


def test_the_users_split_is_kept_and_stored_with_its_column_names(fitted, cancer):
    train, validation, test = cancer
    info = Store().info(fitted.summary["data"])
    assert info.rows == {"train": len(train), "test": len(test), "validation": len(validation)}
    assert info.feature_names == list(features(train).columns) and info.target == "label"
    assert info.class_names == ["benign", "malignant"]
    stored = Store().read(fitted.summary["data"], "test")
    np.testing.assert_array_equal(stored.x, features(test).to_numpy(np.float32))
    # The stored validation split is the one the run selected on (no carve from train).
    assert "val/accuracy" in fitted.summary["metrics"] and fitted.summary["best"]["split"] == "val"


def test_columns_are_matched_by_name_in_any_order(fitted, cancer):
    _, _, test = cancer
    model = fitted.model
    as_stored = np.asarray(model(features(test).to_numpy(np.float32)))
    shuffled = features(test)[list(np.random.default_rng(0).permutation(features(test).columns))]
    assert list(shuffled.columns) != list(features(test).columns)
    np.testing.assert_array_equal(np.asarray(model(shuffled)), as_stored)
    np.testing.assert_array_equal(np.asarray(model(pa.Table.from_pandas(shuffled))), as_stored)
    np.testing.assert_array_equal(np.asarray(model(test)), as_stored)  # the target column is ignored


@pytest.mark.parametrize("change, named", [
    (lambda f: f.drop(columns=["mean radius"]), "the frame has no column 'mean radius'"),
    (lambda f: f.assign(extra=1.0), "the frame has column 'extra' the model was not trained on"),
], ids=["missing", "extra"])
def test_a_missing_or_extra_column_is_one_line(fitted, cancer, change, named):
    with pytest.raises(ModelInputError) as err:
        fitted.model.predict(change(features(cancer[2])))
    assert str(err.value).startswith(named) and "\n" not in str(err.value), str(err.value)


def test_predict_gives_class_names_and_predict_proba_their_probabilities(fitted, cancer):
    _, _, test = cancer
    model = fitted.model
    logits = np.asarray(model(test))
    predicted = model.predict(test)
    np.testing.assert_array_equal(predicted, np.array(["benign", "malignant"])[logits.argmax(-1)])
    assert (predicted == test["label"].to_numpy()).mean() == pytest.approx(fitted.summary["metrics"]["test/accuracy"])
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(proba.argmax(1), logits.argmax(-1))


def test_evaluate_equals_the_runs_own_test_metrics(fitted, cancer):
    _, _, test = cancer
    model = fitted.model
    written = json.loads((fitted.run_dir / "summary.json").read_text())["metrics"]
    expected = {name: written[f"test/{name}"] for name in ("loss", "accuracy")}
    assert model.evaluate(test) == expected  # the run's evaluation program on the same rows: equal, not close
    assert model.evaluate(fitted.summary["data"]) == expected  # the stored test split
    assert model.evaluate((features(test).to_numpy(np.float32), test["label"].to_numpy())) == expected
    loaded = pipeline.load_run(fitted.run_dir, which="latest")
    assert loaded.evaluate(test) == expected
    np.testing.assert_array_equal(loaded.predict(test), model.predict(test))


def test_one_row_as_a_vector_or_a_one_row_frame(fitted, cancer):
    _, _, test = cancer
    model = fitted.model
    batch = np.asarray(model(features(test)))
    row = features(test).to_numpy(np.float32)[3]
    np.testing.assert_array_equal(np.asarray(model(row)), batch[3:4])
    np.testing.assert_array_equal(np.asarray(model(features(test).iloc[3:4])), batch[3:4])
    assert model.predict(row).tolist() == [model.predict(test)[3]]


def test_history_is_the_runs_metrics_table(fitted):
    history = fitted.history
    assert isinstance(history, pd.DataFrame)
    assert {"step", "split", "name", "value"} <= set(history.columns)
    last = history[(history["split"] == "test") & (history["name"] == "accuracy")].sort_values("step").iloc[-1]
    assert last["value"] == fitted.summary["metrics"]["test/accuracy"]
    assert int(last["step"]) == fitted.summary["steps"]


def test_a_single_frame_states_the_rows_it_holds_out(home, cancer, capsys):
    train, _, _ = cancer
    result = pipeline.fit(Config(), data=train, target="label", overrides={"steps": 20, "eval_every": 20},
                          test_fraction=0.25)
    rows = Store().info(result.summary["data"]).rows
    assert rows["test"] == round(0.25 * len(train)) and rows["train"] + rows["test"] == len(train)
    note = capsys.readouterr().err
    assert f"held out {rows['test']} of {len(train)} rows (25%, seeded) as the test split" in note


def test_a_regression_model_predicts_numbers_and_evaluates_like_its_run(home):
    """The issue's case: the diabetes target as integers. Said to be regression, it is one."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    frame["target"] = frame["target"].astype(int)
    train, test = frame.iloc[:350], frame.iloc[350:]
    result = pipeline.fit("regression_mlp", data=(train, test), target="target", task="regression",
                          overrides={"steps": 100, "eval_every": 100, "model.hidden": (16,)})
    assert Store().info(result.summary["data"]).task == "regression"
    predicted = result.model.predict(test)
    assert predicted.shape == (len(test),) and predicted.dtype == np.float32
    metrics = result.model.evaluate(test)
    for name in ("loss", "mse", "mae", "r2"):
        assert metrics[name] == result.summary["metrics"][f"test/{name}"], name
    assert float(np.mean((predicted - test["target"].to_numpy()) ** 2)) == pytest.approx(metrics["mse"], rel=1e-4)
    with pytest.raises(pipeline.PipelineError, match="predict_proba is for classification"):
        result.model.predict_proba(test)


def test_arrays_keep_working_as_before(home):
    """A model trained on arrays has no column names: arrays in, and a frame is one line saying so."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    result = pipeline.fit(Config(), data=(x[:150], y[:150], x[150:], y[150:]), overrides={"steps": 30,
                                                                                           "eval_every": 30})
    model = result.model
    assert model.predict(x[150:]).tolist() == np.asarray(model(x[150:])).argmax(-1).tolist()
    assert model.evaluate(x[150:], y[150:]) == {k.removeprefix("test/"): v for k, v in
                                                result.summary["metrics"].items() if k.startswith("test/")}
    with pytest.raises(ModelInputError, match="imported without column names"):
        model(pd.DataFrame(x, columns=list("abcd")))


def test_the_model_is_still_the_nnx_module(fitted, cancer):
    """Split and merged again, it keeps its class (and so its surface); attribute access reaches the module."""
    from flax import nnx

    _, _, test = cancer
    model = fitted.model
    assert type(model).__name__ == "Standardized" and isinstance(model, nnx.Module)
    assert model.mean.shape == (30,)
    graphdef, state = nnx.split(model)
    again = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(again.predict(test), model.predict(test))
    assert again.class_names == ["benign", "malignant"] and again.feature_names[0] == "mean radius"
