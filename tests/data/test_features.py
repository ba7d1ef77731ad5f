"""Feature columns through ``pipeline data import``: list columns as tensors, ``--features``, bad columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.data.sources import split_off_test
from tests.data.conftest import numbered, write_csv
from tests.data.test_import_cli import expect_error


def import_ok(cli, *args: str) -> str:
    result = cli("data", "import", *args)
    assert result.code == 0, result.err
    return result.out


def test_an_integer_list_column_alone_is_int32_token_ids(cli, store, tmp_path):
    tokens = np.arange(40 * 6).reshape(40, 6) % 50 + 3
    pq.write_table(pa.table({"ids": pa.array(list(tokens), pa.list_(pa.int64())), "label": np.arange(40) % 2}),
                   tmp_path / "t.parquet")
    out = import_ok(cli, str(tmp_path / "t.parquet"), "--name", "t", "--target", "label", "--block-mb", "0.0002")
    assert "features [6], train 32, test 8 rows" in out
    info = store.info("t")
    assert (info.feature_shape, info.feature_dtype, info.feature_stats) == ((6,), "int32", {})
    train, test = split_off_test(numbered(40), 0.2, 0)  # the same seeded split as any source of 40 rows
    got = store.read("t", "train").x
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, tokens[train.x[:, 0].astype(int)])
    assert "statistics   none (integer features)" in cli("data", "show", "t").out


def test_float_lists_fixed_size_lists_and_nested_lists(cli, store, tmp_path):
    rows = 20
    emb = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 8
    table = pa.table({
        "a": np.arange(rows, dtype=np.float64),
        "emb": pa.array(list(emb), pa.list_(pa.float32())),
        "fixed": pa.array(list(emb), pa.list_(pa.float32(), 4)),
        "ints": pa.array(list(np.arange(rows * 2).reshape(rows, 2)), pa.list_(pa.int32())),
        "grid": pa.array([e.reshape(2, 2).tolist() for e in emb], pa.list_(pa.list_(pa.float64()))),
        "label": np.arange(rows) % 3,
    })
    pq.write_table(table, tmp_path / "l.parquet")
    source = [str(tmp_path / "l.parquet"), "--target", "label", "--test-fraction", "0.5"]
    # Several columns: flattened and concatenated in the order --features gives.
    assert "features [7]" in import_ok(cli, *source, "--name", "mix", "--features", "emb,a,ints")
    assert store.info("mix").feature_dtype == "float32"
    train = split_off_test(numbered(rows), 0.5, 0)[0].x[:, 0].astype(int)
    want = np.concatenate([emb, np.arange(rows)[:, None], np.arange(rows * 2).reshape(rows, 2)], axis=1)[train]
    np.testing.assert_array_equal(store.read("mix", "train").x, want)
    assert "features [4]" in import_ok(cli, *source, "--name", "fixed", "--features", "fixed")
    np.testing.assert_array_equal(store.read("fixed", "train").x, emb[train])
    assert "features [2, 2]" in import_ok(cli, *source, "--name", "grid", "--features", "grid")
    np.testing.assert_array_equal(store.read("grid", "train").x, emb[train].reshape(-1, 2, 2))
    assert store.info("grid").feature_dtype == "float32"


def test_lists_of_different_lengths_name_file_column_and_row(cli, workdir, tmp_path):
    values = [[1.0, 2.0, 3.0]] * 30
    values[23] = [1.0, 2.0]
    pq.write_table(pa.table({"v": values, "label": np.arange(30) % 2}), tmp_path / "ragged.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "ragged.parquet"), "--name", "d", "--target", "label",
                                "--block-mb", "0.0002"],  # row 23 is in a later chunk than row 0
                 "ragged.parquet: list column 'v' row 23 has a list of 2, not 3 like its first row")
    values[23] = [1.0, None, 3.0]
    pq.write_table(pa.table({"v": values, "label": np.arange(30) % 2}), tmp_path / "holes.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "holes.parquet"), "--name", "d", "--target", "label"],
                 "holes.parquet: list column 'v' row 23 has an empty value")
    big = pa.array([[1, 2]] * 9 + [[1, 2**40]], pa.list_(pa.int64()))
    pq.write_table(pa.table({"ids": big, "label": np.arange(10) % 2}), tmp_path / "big.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "big.parquet"), "--name", "d", "--target", "label"],
                 "big.parquet: column 'ids' row 9 has a value outside int32")


def test_features_picks_columns_in_order(cli, store, workdir, tmp_path):
    data = numbered(30)
    table = pa.table({"f0": data.x[:, 0], "note": ["text"] * 30, "f1": data.x[:, 1], "f2": data.x[:, 2],
                      "label": data.y})
    pcsv.write_csv(table, tmp_path / "n.csv")
    # 'note' is text: picking the numeric columns leaves it unread.
    out = import_ok(cli, str(tmp_path / "n.csv"), "--name", "p", "--target", "label", "--features", "f2, f0")
    assert "features [2], train 24, test 6 rows" in out
    train = split_off_test(data, 0.2, 0)[0]
    np.testing.assert_array_equal(store.read("p", "train").x, train.x[:, [2, 0]])
    args = ["data", "import", str(tmp_path / "n.csv"), "--name", "d", "--target", "label", "--features"]
    expect_error(cli, workdir, args + ["f0,size"], "n.csv: no feature column 'size' (columns: f0, note, f1, f2, label)")
    expect_error(cli, workdir, args + ["f0,label"], "n.csv: feature column 'label' is the target")
    expect_error(cli, workdir, args + ["f0,f0"], "feature column 'f0' is named twice")
    expect_error(cli, workdir, args + [","], "--features names no column")
    expect_error(cli, workdir, args[:-1], "n.csv: feature column 'note' row 0 is not numeric (value 'text')")
    np.savez(tmp_path / "a.npz", x=data.x, y=data.y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "a.npz"), "--name", "d", "--features", "x"],
                 "a.npz: --features picks columns of a table source")


def test_duplicate_column_names(cli, workdir, tmp_path):
    (tmp_path / "dup.csv").write_text("a,b,a,label\n1,2,3,0\n4,5,6,1\n")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "dup.csv"), "--name", "d", "--target", "label"],
                 "dup.csv: column 'a' appears more than once")
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array([0, 1])],
                                 names=["x", "x", "label"])
    pq.write_table(table, tmp_path / "dup.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "dup.parquet"), "--name", "d", "--target", "label"],
                 "dup.parquet: column 'x' appears more than once")


def test_csv_features_unchanged(cli, store, tmp_path):
    """Plain numeric CSV columns still become one float32 vector a row."""
    data = numbered(10)
    write_csv(tmp_path / "n.csv", data.x, data.y)
    import_ok(cli, str(tmp_path / "n.csv"), "--name", "n", "--target", "label")
    info = store.info("n")
    assert (info.feature_shape, info.feature_dtype) == ((3,), "float32")
