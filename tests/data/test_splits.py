"""A source's own splits survive ``pipeline data import``: HF-style file names and split folders."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.sources import split_off_test
from pipeline.data.splits import split_of
from tests.data.conftest import numbered, write_csv, write_numbered
from tests.data.test_import_cli import expect_error

ANIMALS = np.array(["cat", "dog", "emu"])


def write_part(path, start: int, n: int, labels=None) -> None:
    """Rows ``numbered(n, start)``: feature ``a`` is the row's number, so where each row went is visible."""
    data = numbered(n, start)
    path.parent.mkdir(parents=True, exist_ok=True)
    label = ANIMALS[data.y] if labels is None else labels
    pq.write_table(pa.table({"a": data.x[:, 0], "b": data.x[:, 1], "label": label}), path)


@pytest.mark.parametrize("relative, split", [
    ("train-00000-of-00001.parquet", "train"), ("data/test-00000-of-00001.parquet", "test"),
    ("validation-00001-of-00002.parquet", "validation"), ("valid/x.csv", "validation"), ("val.csv", "validation"),
    ("train/part-0.parquet", "train"), ("Test.csv", "test"), ("part-0.parquet", None), ("training.csv", None),
    ("trainer-1.csv", None), ("test2.csv", None),
])
def test_split_names(relative, split):
    assert split_of(relative) == split


def test_hf_parquet_files_keep_their_splits(cli, store, tmp_path):
    hf = tmp_path / "hf" / "data"
    write_part(hf / "train-00000-of-00002.parquet", 0, 15, ANIMALS[[0, 1] * 7 + [0]])
    write_part(hf / "train-00001-of-00002.parquet", 15, 15, ANIMALS[[1, 0] * 7 + [1]])
    write_part(hf / "test-00000-of-00001.parquet", 1000, 10, ANIMALS[[2, 0] * 5])  # 'emu' only in test
    write_part(hf / "validation-00000-of-00001.parquet", 2000, 5, ANIMALS[[1] * 5])
    result = cli("data", "import", str(tmp_path / "hf"), "--name", "hf", "--target", "label",
                 "--test-fraction", "0.5", "--block-mb", "0.0002")  # the fraction is ignored: test is the source's
    assert result.code == 0, result.err
    assert "train 30, test 10, validation 5 rows" in result.out
    for split, (start, n) in {"train": (0, 30), "test": (1000, 10), "validation": (2000, 5)}.items():
        np.testing.assert_array_equal(store.read("hf", split).x[:, 0], np.arange(start, start + n))
    info = store.info("hf")
    assert info.class_names == ["cat", "dog", "emu"]  # one label plan over every split
    np.testing.assert_array_equal(store.read("hf", "test").y, [2, 0] * 5)
    np.testing.assert_array_equal(store.read("hf", "validation").y, [1] * 5)
    shown = cli("data", "show", "hf").out
    assert "validation: 5 rows" in shown and "test: 10 rows" in shown
    assert cli("data", "verify", "hf").out.startswith("ok: 'hf' 3 files, test 10, train 30, validation 5 rows")
    # The same folder as a URI gives the same dataset.
    uri = cli("data", "import", (tmp_path / "hf").as_uri(), "--name", "uri", "--target", "label")
    assert uri.code == 0 and store.info("uri").fingerprint == info.fingerprint


def test_csv_split_folders(cli, store, tmp_path):
    for folder, start, n in (("train", 0, 12), ("valid", 500, 4), ("test", 900, 6)):
        data = numbered(n, start)
        (tmp_path / "src" / folder).mkdir(parents=True)
        write_csv(tmp_path / "src" / folder / "part.csv", data.x, data.y)
    result = cli("data", "import", str(tmp_path / "src"), "--name", "c", "--target", "label")
    assert result.code == 0 and "train 12, test 6, validation 4 rows" in result.out
    np.testing.assert_array_equal(store.read("c", "validation").x, numbered(4, 500).x)
    np.testing.assert_array_equal(store.read("c", "test").y, numbered(6, 900).y)


def test_without_a_test_split_the_train_rows_are_split_at_random(cli, store, tmp_path):
    write_part(tmp_path / "src" / "train-00000.parquet", 0, 40)
    write_part(tmp_path / "src" / "val-00000.parquet", 700, 5)
    result = cli("data", "import", str(tmp_path / "src"), "--name", "r", "--target", "label",
                 "--test-fraction", "0.25", "--seed", "3")
    assert result.code == 0 and "train 30, test 10, validation 5 rows" in result.out
    train, test = split_off_test(numbered(40), 0.25, 3)
    np.testing.assert_array_equal(store.read("r", "test").x[:, 0], test.x[:, 0])
    np.testing.assert_array_equal(store.read("r", "train").x[:, 0], train.x[:, 0])
    np.testing.assert_array_equal(store.read("r", "validation").x[:, 0], np.arange(700, 705))
    # A single file is one pool of rows, whatever its name.
    write_part(tmp_path / "test.parquet", 0, 40)
    single = cli("data", "import", str(tmp_path / "test.parquet"), "--name", "s", "--target", "label")
    assert single.code == 0 and "train 32, test 8 rows" in single.out


def test_a_stored_dataset_folder_reimports_with_its_splits(cli, store):
    original = write_numbered(store, "n")
    result = cli("data", "import", store.path("n"), "--name", "copy")
    assert result.code == 0 and "train 130, test 20 rows" in result.out
    assert store.info("copy").fingerprint == original.fingerprint


def test_bad_split_layouts(cli, workdir, tmp_path):
    write_part(tmp_path / "a" / "train-0.parquet", 0, 10)
    write_part(tmp_path / "a" / "extra.parquet", 10, 10)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "a"), "--name", "d", "--target", "label"],
                 "extra.parquet: names no split (train, test, validation) but other files of")
    write_part(tmp_path / "b" / "test-0.parquet", 0, 10)
    write_part(tmp_path / "b" / "validation-0.parquet", 10, 10)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "b"), "--name", "d", "--target", "label"],
                 "files of the test, validation split but none of train")
    pq.write_table(pq.read_table(tmp_path / "b" / "test-0.parquet").slice(0, 0), tmp_path / "b" / "train-0.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "b"), "--name", "d", "--target", "label"],
                 "the train split has no rows")
