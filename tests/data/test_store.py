"""Arrays -> Parquet -> arrays: equal values, shapes and dtypes; plain pyarrow sees the data and metadata."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pipeline.data import DataError, Split, Store, import_dataset
from pipeline.data.dataset import fingerprint
from pipeline.data.layout import Layout
from pipeline.data.sources import split_off_test
from tests.data.conftest import SMALL, numbered, write_csv, write_numbered


def test_npz_round_trip_keeps_values_shapes_and_dtypes(store, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4, 4)).astype(np.float32), rng.integers(0, 5, 50)
    xt, yt = rng.normal(size=(10, 4, 4)).astype(np.float32), rng.integers(0, 5, 10)
    np.savez(tmp_path / "a.npz", x=x, y=y, x_test=xt, y_test=yt)
    info = import_dataset(store, str(tmp_path / "a.npz"), "a")
    assert info.feature_shape == (4, 4) and info.num_classes == 5 and info.rows == {"train": 50, "test": 10}
    for split, (want_x, want_y) in {"train": (x, y), "test": (xt, yt)}.items():
        got = store.read("a", split)
        assert got.x.dtype == np.float32 and got.y.dtype == np.int32
        np.testing.assert_array_equal(got.x, want_x)
        np.testing.assert_array_equal(got.y, want_y)


def test_regression_round_trip_with_seeded_test_split(store, tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=40).astype(np.float32)
    np.savez(tmp_path / "r.npz", x=x, y=y)
    info = import_dataset(store, str(tmp_path / "r.npz"), "r", test_fraction=0.25, seed=7)
    train, test = split_off_test(Split(x, y), 0.25, 7)
    assert info.task == "regression" and info.rows == {"train": 30, "test": 10}
    np.testing.assert_array_equal(store.read("r", "train").x, train.x)
    np.testing.assert_array_equal(store.read("r", "test").y, test.y)
    assert store.read("r", "test").y.dtype == np.float32


def test_many_files_and_row_groups_read_back_in_order(store):
    info = write_numbered(store, "n")
    files = store.files("n", "train")
    assert len(files) == 4  # 13 groups of 10 rows, 4 groups a file
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [4, 4, 4, 1]
    got = store.read("n", "train")
    want = numbered(130)
    np.testing.assert_array_equal(got.x, want.x)
    np.testing.assert_array_equal(got.y, want.y)
    assert info.fingerprint == fingerprint({"train": want, "test": numbered(20, start=10_000)})


def test_plain_pyarrow_reads_the_files_and_their_metadata(store):
    info = write_numbered(store, "n")
    for split in ("train", "test"):
        for path in store.files("n", split):
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"pipeline"])
            assert meta["rows"] == {"train": 130, "test": 20}
            assert meta["fingerprint"] == info.fingerprint and meta["fingerprint"].startswith("sha256:")
            assert meta["feature_shape"] == [3] and meta["class_names"] == ["a", "b", "c"]
            assert meta["format_version"] == 2 and meta["task"] == "classification"
            assert table.column("x").type.shape == [3]
    whole = pq.read_table(store.path("n", "train"))  # the split folder as one pyarrow dataset
    np.testing.assert_array_equal(whole.column("y").to_numpy(), numbered(130).y)


def test_import_is_independent_of_chunking(store, tmp_path):
    """A CSV read in 256-byte blocks and one read whole give byte-identical datasets."""
    data = numbered(300)
    write_csv(tmp_path / "n.csv", data.x, data.y)
    small = import_dataset(store, str(tmp_path / "n.csv"), "small", target="label", layout=SMALL)
    whole = import_dataset(store, str(tmp_path / "n.csv"), "whole", target="label", layout=Layout())
    np.savez(tmp_path / "n.npz", x=data.x, y=data.y)
    arrays = import_dataset(store, str(tmp_path / "n.npz"), "arrays")
    assert len(store.files("small", "train")) > 1 and len(store.files("whole", "train")) == 1
    assert small.fingerprint == whole.fingerprint == arrays.fingerprint
    np.testing.assert_array_equal(store.read("small", "test").x, store.read("arrays", "test").x)


def test_folder_and_glob_sources_equal_one_file(store, tmp_path):
    data = numbered(90)
    write_csv(tmp_path / "all.csv", data.x, data.y)
    (tmp_path / "parts").mkdir()
    for k in range(3):
        part = numbered(30, start=30 * k)
        write_csv(tmp_path / "parts" / f"p{k}.csv", part.x, part.y)
    one = import_dataset(store, str(tmp_path / "all.csv"), "one", target="label")
    folder = import_dataset(store, str(tmp_path / "parts"), "folder", target="label", layout=SMALL)
    glob = import_dataset(store, str(tmp_path / "parts" / "p*.csv"), "glob", target="label")
    assert one.fingerprint == folder.fingerprint == glob.fingerprint
    # Parquet parts written by plain pyarrow import the same way.
    (tmp_path / "pq").mkdir()
    for k in range(3):
        pq.write_table(pcsv.read_csv(tmp_path / "parts" / f"p{k}.csv"), tmp_path / "pq" / f"p{k}.parquet")
    assert import_dataset(store, str(tmp_path / "pq"), "pq", target="label").fingerprint == one.fingerprint


def test_reimport_of_a_stored_split_keeps_its_meaning(store):
    write_numbered(store, "n")
    again = import_dataset(store, store.path("n", "train"), "again", test_fraction=0.5, seed=3)
    assert again.task == "classification" and again.class_names == ["a", "b", "c"]
    assert again.feature_shape == (3,) and again.rows == {"train": 65, "test": 65}
    train, test = split_off_test(numbered(130), 0.5, 3)
    np.testing.assert_array_equal(store.read("again", "test").x, test.x)


def test_failed_overwrite_keeps_the_old_dataset(store, tmp_path):
    before = write_numbered(store, "n")
    x = numbered(50).x
    x[45, 1] = np.nan  # the last chunk: earlier chunks are already written when it fails
    write_csv(tmp_path / "bad.csv", x, numbered(50).y)
    with pytest.raises(DataError, match="row 45 column 'f1' has a NaN"):
        import_dataset(store, str(tmp_path / "bad.csv"), "n", target="label", overwrite=True, layout=SMALL)
    assert Store(store.root).info("n").fingerprint == before.fingerprint
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["n"]  # no staging folder left
