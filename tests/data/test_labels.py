"""Labels become dense class ids 0..K-1 with the original values as class names, from any source."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.sources import split_off_test
from tests.data.conftest import numbered, write_csv


def imported(cli, store, name: str, *args: str):
    result = cli("data", "import", *args, "--name", name)
    assert result.code == 0, result.err
    return store.info(name)


def stored_labels(store, name: str) -> list[str]:
    """The stored labels of train then test, as their class names."""
    info = store.info(name)
    ids = np.concatenate([store.read(name, "train").y, store.read(name, "test").y])
    return [info.class_names[i] for i in ids]


def source_labels(y, fraction: float = 0.2, seed: int = 0) -> list[str]:
    """Labels of train then test as the import's seeded split orders them."""
    train, test = split_off_test(numbered(len(y)), fraction, seed)
    rows = np.concatenate([train.x[:, 0], test.x[:, 0]]).astype(int)
    return [str(v) for v in np.asarray(y)[rows]]


@pytest.mark.parametrize("kind", ["csv", "npz"])
def test_sparse_integer_labels_become_dense_ids(cli, store, tmp_path, kind):
    y = np.array([0, 1, 200000] * 10, dtype=np.int64)
    data = numbered(30)
    path = tmp_path / f"s.{kind}"
    write_csv(path, data.x, y) if kind == "csv" else np.savez(path, x=data.x, y=y)
    info = imported(cli, store, "s", str(path), *(["--target", "label"] if kind == "csv" else []))
    assert (info.num_classes, info.class_names) == (3, ["0", "1", "200000"])
    assert stored_labels(store, "s") == source_labels(y)
    assert "classes      3 (0, 1, 200000)" in cli("data", "show", "s").out


def test_huge_and_negative_integer_labels(cli, store, tmp_path):
    y = np.array([2**32, -5, 7] * 6, dtype=np.int64)
    pq.write_table(pa.table({"a": np.arange(18.0), "label": y}), tmp_path / "h.parquet")
    info = imported(cli, store, "h", str(tmp_path / "h.parquet"), "--target", "label")
    assert (info.num_classes, info.class_names) == (3, ["-5", "7", str(2**32)])
    assert stored_labels(store, "h") == source_labels(y)


def test_labels_that_are_ids_already_keep_them(cli, store, tmp_path):
    y = np.arange(40) % 4
    data = numbered(40)
    write_csv(tmp_path / "k.csv", data.x, y)
    info = imported(cli, store, "k", str(tmp_path / "k.csv"), "--target", "label")
    assert (info.num_classes, info.class_names) == (4, ["0", "1", "2", "3"])
    train, _ = split_off_test(data, 0.2, 0)
    np.testing.assert_array_equal(store.read("k", "train").y, y[train.x[:, 0].astype(int)])
    # 1-based labels are not ids: class '1' is id 0.
    np.savez(tmp_path / "one.npz", x=data.x, y=y + 1)
    info = imported(cli, store, "one", str(tmp_path / "one.npz"))
    assert (info.num_classes, info.class_names) == (4, ["1", "2", "3", "4"])
    np.testing.assert_array_equal(store.read("one", "train").y, y[train.x[:, 0].astype(int)])


def test_npz_classes_are_counted_over_train_and_test(cli, store, tmp_path):
    """Class 2 only in the test arrays still makes 0..2 ids: the ids agree between splits."""
    x = numbered(12).x
    np.savez(tmp_path / "t.npz", x=x[:8], y=np.array([0, 1] * 4), x_test=x[8:], y_test=np.array([2, 2, 0, 1]))
    info = imported(cli, store, "t", str(tmp_path / "t.npz"))
    assert (info.num_classes, info.class_names) == (3, ["0", "1", "2"])
    np.testing.assert_array_equal(store.read("t", "test").y, [2, 2, 0, 1])
    np.savez(tmp_path / "text.npz", x=x, y=np.array(["b", "a", "c"] * 4))
    info = imported(cli, store, "text", str(tmp_path / "text.npz"))
    assert (info.num_classes, info.class_names) == (3, ["a", "b", "c"])
    assert stored_labels(store, "text") == source_labels(["b", "a", "c"] * 4)
