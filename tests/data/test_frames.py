"""``import_arrays`` and ``import_dataframe``: the CLI's import from Python, same datasets, same errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import DataError, import_arrays, import_dataframe
from pipeline.data.sources import split_off_test
from tests.data.conftest import numbered, snapshot

pd = pytest.importorskip("pandas")


def frame(n: int, start: int = 0) -> pd.DataFrame:
    data = numbered(n, start)
    return pd.DataFrame({"a": data.x[:, 0], "b": data.x[:, 1].astype(np.float64),
                         "emb": list(np.stack([data.x[:, 2], -data.x[:, 2]], axis=1)),
                         "kind": np.array(["cat", "dog", "emu"])[data.y], "note": "unused"})


def test_import_arrays_equals_the_npz_import(cli, store, tmp_path):
    data = numbered(50)
    y = np.array([10, 20, 30, 40, 50])[np.arange(50) % 5]  # not ids: dense ids, values as names
    info = import_arrays(store, "py", data.x, y, test_fraction=0.3, seed=4)
    np.savez(tmp_path / "a.npz", x=data.x, y=y)
    assert cli("data", "import", str(tmp_path / "a.npz"), "--name", "cli", "--test-fraction", "0.3",
               "--seed", "4").code == 0
    assert info.fingerprint == store.info("cli").fingerprint and info.rows == {"train": 35, "test": 15}
    assert info.class_names == ["10", "20", "30", "40", "50"] and info.source == "python:arrays"
    assert store.info("py").feature_stats == info.feature_stats != {}
    train, _ = split_off_test(data, 0.3, 4)
    np.testing.assert_array_equal(store.read("py", "train").x, train.x)
    given = import_arrays(store, "given", data.x[:40], y[:40], data.x[40:], y[40:])
    assert given.rows == {"train": 40, "test": 10}
    np.testing.assert_array_equal(store.read("given", "test").x, data.x[40:])


def test_import_dataframe_equals_the_parquet_import(cli, store, tmp_path):
    train, test = frame(30), frame(8, start=500)
    info = import_dataframe(store, "df", train, "kind", features=["emb", "a", "b"], test_df=test)
    assert info.rows == {"train": 30, "test": 8} and info.feature_shape == (4,)
    assert info.class_names == ["cat", "dog", "emu"] and info.source == "dataframe"
    # The same rows as HF-style Parquet files through the CLI: the same dataset.
    (tmp_path / "hf").mkdir()
    train.to_parquet(tmp_path / "hf" / "train-00000-of-00001.parquet")
    test.to_parquet(tmp_path / "hf" / "test-00000-of-00001.parquet")
    result = cli("data", "import", str(tmp_path / "hf"), "--name", "pq", "--target", "kind",
                 "--features", "emb,a,b")
    assert result.code == 0, result.err
    assert store.info("pq").fingerprint == info.fingerprint
    got = store.read("df", "test").x
    np.testing.assert_array_equal(got[:, 2], test["a"].to_numpy())
    np.testing.assert_array_equal(got[:, :2], np.stack(test["emb"].to_list()))
    # Without test_df, a seeded share of the rows; a pyarrow Table works too.
    split = import_dataframe(store, "split", pa.Table.from_pandas(train), "kind", features=["a"],
                             test_fraction=0.5, seed=2)
    assert split.rows == {"train": 15, "test": 15}
    np.testing.assert_array_equal(store.read("split", "test").x[:, 0], split_off_test(numbered(30), 0.5, 2)[1].x[:, 0])


def test_dataframe_errors_are_one_line_and_store_nothing(store, workdir):
    import_dataframe(store, "keep", frame(10), "kind", features=["a"])
    before = snapshot(workdir / "data")
    bad = frame(10)
    bad.loc[4, "a"] = np.nan
    cases = [
        (dict(df=frame(10), target="price"), "dataframe: no target column 'price' (columns: a, b, emb, kind, note)"),
        (dict(df=frame(10), target="kind", features=["a", "size"]), "dataframe: no feature column 'size'"),
        (dict(df=frame(10), target="kind"), "dataframe: feature column 'note' is not numeric ("),
        (dict(df=bad, target="kind", features=["a"]), "dataframe: column 'a' row 4 is empty"),
        (dict(df=frame(10), target="kind", features=["a"], test_df=frame(5)[["a", "kind"]]),
         "test_df: columns a, kind differ from dataframe's"),
        (dict(df=frame(10).rename(columns={"b": "a"}), target="kind"), "dataframe: column 'a' appears more than once"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError) as caught:
            import_dataframe(store, "d", **kwargs)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(DataError, match="dataset 'keep' already exists"):
        import_dataframe(store, "keep", frame(10), "kind", features=["a"])
    with pytest.raises(DataError, match=r"python:arrays \(all rows\): features have 10 rows but labels have 9"):
        import_arrays(store, "d", numbered(10).x, np.zeros(9, np.int64))
    assert snapshot(workdir / "data") == before
    pq.read_table(store.files("keep", "train")[0])  # still whole
