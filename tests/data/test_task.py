"""The task of an import said (``--task classification|regression``) or decided, and refused when an
integer target could be either; the source's column names stored with the dataset; an experiment of
one task on a dataset of the other refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import DataError, DatasetInfo, Store, import_arrays, import_dataframe
from tests.data.conftest import write_csv

ROWS = 300


def counts(n: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Features and an integer target with about 120 distinct values: a count, not a class id."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.round(100 + 40 * x[:, 0] + 10 * rng.normal(size=n)).astype(np.int64)
    return x, y


def one_error_line(result) -> str:
    assert result.code != 0, result.out
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    return result.err


def test_an_ambiguous_integer_target_is_refused_naming_both_choices(cli, workdir):
    x, y = counts()
    write_csv(workdir / "counts.csv", x, y, target="visits")
    line = one_error_line(cli("data", "import", str(workdir / "counts.csv"), "--name", "c", "--target", "visits"))
    distinct = len(np.unique(y))
    assert f"target 'visits' holds {distinct} distinct integers in {ROWS} rows" in line
    assert "--task classification or --task regression" in line
    assert not Store(workdir / "data").exists("c")
    assert "no datasets" in cli("data", "list").out  # nothing stored, not even staging left listed


def test_task_regression_makes_a_regression_dataset_of_the_same_numbers(cli, workdir):
    x, y = counts()
    write_csv(workdir / "counts.csv", x, y, target="visits")
    r = cli("data", "import", str(workdir / "counts.csv"), "--name", "c", "--target", "visits", "--task", "regression")
    assert r.code == 0, r.err
    store = Store(workdir / "data")
    info = store.info("c")
    assert (info.task, info.num_classes, info.label_dtype) == ("regression", 0, "float32")
    assert info.feature_names == ["f0", "f1", "f2"] and info.target == "visits"
    stored = np.concatenate([store.read("c", s).y for s in ("train", "test")])
    np.testing.assert_array_equal(np.sort(stored), np.sort(y.astype(np.float32)))


def test_task_classification_makes_a_class_of_each_value(cli, workdir):
    x, y = counts()
    write_csv(workdir / "counts.csv", x, y, target="visits")
    r = cli("data", "import", str(workdir / "counts.csv"), "--name", "c", "--target", "visits",
            "--task", "classification")
    assert r.code == 0, r.err
    info = Store(workdir / "data").info("c")
    assert info.task == "classification" and info.class_names == [str(v) for v in np.unique(y)]


def test_few_integer_classes_are_classes_unasked(cli, workdir):
    x, _ = counts(40)
    write_csv(workdir / "small.csv", x, np.arange(40) % 7, target="label")  # 7 classes in 40 rows
    assert cli("data", "import", str(workdir / "small.csv"), "--name", "s", "--target", "label").code == 0
    assert Store(workdir / "data").info("s").num_classes == 7


def test_fractional_numbers_as_classes_and_text_as_regression(cli, workdir):
    x, _ = counts(60)
    write_csv(workdir / "half.csv", x, (np.arange(60) % 3) / 2, target="grade")  # 0, 0.5, 1
    assert cli("data", "import", str(workdir / "half.csv"), "--name", "h", "--target", "grade").code == 0
    assert Store(workdir / "data").info("h").task == "regression"
    r = cli("data", "import", str(workdir / "half.csv"), "--name", "h2", "--target", "grade",
            "--task", "classification")
    assert r.code == 0, r.err
    assert Store(workdir / "data").info("h2").class_names == ["0", "0.5", "1"]
    write_csv(workdir / "text.csv", x, np.array(["low", "high"])[np.arange(60) % 2], target="level")
    line = one_error_line(cli("data", "import", str(workdir / "text.csv"), "--name", "t", "--target", "level",
                              "--task", "regression"))
    assert "target 'level' holds text (or true/false), not numbers; --task regression needs numbers" in line
    assert not Store(workdir / "data").exists("t")


def test_an_npz_and_arrays_from_python_follow_the_same_rule(cli, workdir):
    x, y = counts()
    np.savez(workdir / "counts.npz", x=x, y=y)
    line = one_error_line(cli("data", "import", str(workdir / "counts.npz"), "--name", "n"))
    assert "distinct integers" in line and "--task regression" in line
    assert cli("data", "import", str(workdir / "counts.npz"), "--name", "n", "--task", "regression").code == 0
    store = Store(workdir / "data")
    assert store.info("n").task == "regression"
    with pytest.raises(DataError, match="--task classification or --task regression"):
        import_arrays(store, "a", x, y)
    assert import_arrays(store, "a", x, y, task="regression").task == "regression"
    frame = pd.DataFrame(x, columns=["u", "v", "w"]).assign(visits=y)
    with pytest.raises(DataError, match="dataframe: target 'visits' holds"):
        import_dataframe(store, "f", frame, "visits")
    info = import_dataframe(store, "f", frame, "visits", task="regression")
    assert (info.task, info.feature_names, info.target) == ("regression", ["u", "v", "w"], "visits")
    assert not store.exists("a-refused")


def test_feature_names_are_stored_for_parquet_in_the_order_picked(cli, workdir):
    x, _ = counts(30)
    table = pa.table({"b": x[:, 0], "a": x[:, 1], "skip": x[:, 2], "label": np.arange(30) % 2})
    pq.write_table(table, workdir / "t.parquet")
    r = cli("data", "import", str(workdir / "t.parquet"), "--name", "p", "--target", "label", "--features", "a,b")
    assert r.code == 0, r.err
    assert Store(workdir / "data").info("p").feature_names == ["a", "b"]


def test_metadata_without_feature_names_still_reads():
    """Datasets imported before ``feature_names`` existed: the field is empty, nothing else changes."""
    old = {"name": "old", "task": "classification", "feature_shape": [3], "feature_dtype": "float32",
           "label_shape": [], "label_dtype": "int32", "num_classes": 2, "class_names": ["a", "b"]}
    info = DatasetInfo.from_json(json.dumps(old))
    assert (info.feature_names, info.target) == ([], "")
    with pytest.raises(ValueError, match="field 'feature_names' must be a list of strings"):
        DatasetInfo.from_json(json.dumps({**old, "feature_names": [1, 2]}))


@pytest.mark.parametrize("experiment, dataset, said", [
    ("regression_mlp", "digits", "import it again with --task regression if its labels are numbers, or train a "
                                 "classification experiment on it"),
    ("digits_mlp", "regression", "import it again with --task classification if its targets are class labels, or "
                                 "train a regression experiment on it"),
])
def test_an_experiment_of_the_other_task_is_one_line(cli, workdir, experiment, dataset, said):
    line = one_error_line(cli("train", experiment, f"data={dataset}", "steps=5", "--no-progress"))
    assert f"does not fit dataset '{dataset}'" in line and said in line
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())
