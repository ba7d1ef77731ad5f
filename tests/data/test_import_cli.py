"""Bad input to ``pipeline data import/show/verify`` as a user meets it: one line, exit 2, store untouched."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import numbered, snapshot, write_csv


def expect_error(cli, workdir, args: list[str], *fragments: str) -> str:
    before = snapshot(workdir / "data")
    result = cli(*args)
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(workdir / "data") == before  # the store is left exactly as it was
    return lines[0]


@pytest.fixture
def csv(tmp_path):
    data = numbered(40)
    path = tmp_path / "good.csv"
    write_csv(path, data.x, data.y)
    return path


def test_missing_source(cli, workdir):
    expect_error(cli, workdir, ["data", "import", str(workdir / "nope.csv"), "--name", "d", "--target", "label"],
                 "nope.csv: no such file")


def test_unreadable_sources(cli, workdir):
    (workdir / "junk.parquet").write_bytes(b"this is not parquet at all")
    expect_error(cli, workdir, ["data", "import", str(workdir / "junk.parquet"), "--name", "d", "--target", "y"],
                 "junk.parquet: cannot read")
    (workdir / "junk.npz").write_bytes(b"PK\x03\x04 truncated zip")
    expect_error(cli, workdir, ["data", "import", str(workdir / "junk.npz"), "--name", "d"],
                 "junk.npz: cannot read")


def test_csv_without_the_target_column(cli, workdir, csv):
    expect_error(cli, workdir, ["data", "import", str(csv), "--name", "d", "--target", "price"],
                 "good.csv: no target column 'price'", "columns: f0, f1, f2, label")


def test_csv_with_a_non_numeric_feature_column(cli, workdir, tmp_path):
    data = numbered(30)
    x = data.x.astype(object)
    x[17, 1] = "abc"
    write_csv(tmp_path / "text.csv", x.astype(str), data.y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "text.csv"), "--name", "d", "--target", "label",
                                "--block-mb", "0.0005"],
                 "text.csv: feature column 'f1' row 17 is not numeric (value 'abc')")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_feature_values_name_the_row(cli, workdir, tmp_path, value):
    data = numbered(30)
    data.x[23, 2] = value
    write_csv(tmp_path / "nan.csv", data.x, data.y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "nan.csv"), "--name", "d", "--target", "label"],
                 "nan.csv: row 23 column 'f2' has a NaN or infinite value")
    np.savez(tmp_path / "nan.npz", x=data.x, y=data.y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "nan.npz"), "--name", "d"],
                 "row 23 has a NaN or infinite feature value")


def test_arrays_of_mismatched_lengths(cli, workdir, tmp_path):
    np.savez(tmp_path / "m.npz", x=np.zeros((10, 3), np.float32), y=np.zeros(9, np.int64))
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "m.npz"), "--name", "d"],
                 "features have 10 rows but labels have 9")


def test_existing_name_needs_overwrite(cli, workdir, csv, tmp_path):
    assert cli("data", "import", str(csv), "--name", "d", "--target", "label").code == 0
    expect_error(cli, workdir, ["data", "import", str(csv), "--name", "d", "--target", "label"],
                 "dataset 'd' already exists", "--overwrite")
    other = numbered(50, start=100)
    write_csv(tmp_path / "other.csv", other.x, other.y)
    result = cli("data", "import", str(tmp_path / "other.csv"), "--name", "d", "--target", "label", "--overwrite")
    assert result.code == 0 and "train 40, test 10 rows" in result.out


def test_dataset_that_does_not_exist(cli, workdir, csv):
    assert cli("data", "import", str(csv), "--name", "d", "--target", "label").code == 0
    for command in ("show", "verify"):
        expect_error(cli, workdir, ["data", command, "nope"], "no dataset 'nope'", "(datasets: d)")


def test_schema_drift_between_source_files(cli, workdir, tmp_path):
    (tmp_path / "parts").mkdir()
    data = numbered(20)
    pq.write_table(pa.table({"a": data.x[:, 0], "label": data.y}), tmp_path / "parts" / "p0.parquet")
    pq.write_table(pa.table({"a": data.x[:, 0].astype(str), "label": data.y}), tmp_path / "parts" / "p1.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "parts"), "--name", "d", "--target", "label"],
                 "p1.parquet: column 'a' is string but float in", "p0.parquet")
    write_csv(tmp_path / "parts" / "p2.csv", data.x, data.y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "parts"), "--name", "d", "--target", "label"],
                 "mixes .csv and .parquet files")


def test_labels_outside_the_class_range(cli, workdir, store):
    from tests.data.conftest import rewrite, write_numbered

    write_numbered(store, "n")
    source = store.files("n", "train")[1]
    y = numbered(40, start=40).y.copy()
    y[7] = 3  # the dataset has 3 classes
    rewrite(source, y=y)
    expect_error(cli, workdir, ["data", "import", source, "--name", "d"],
                 "part-00001.parquet: row 7 has label 3 outside the 3 classes")


def test_empty_sources(cli, workdir, tmp_path):
    (tmp_path / "empty.csv").write_text("f0,f1,label\n")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "empty.csv"), "--name", "d", "--target", "label"],
                 "empty.csv: no rows")
    write_csv(tmp_path / "one.csv", numbered(1).x, numbered(1).y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "one.csv"), "--name", "d", "--target", "label"],
                 "leaves no training rows out of 1")


def test_failing_import_leaves_no_dataset_behind(cli, workdir, tmp_path):
    data = numbered(400)
    data.x[390, 0] = np.nan  # found after several chunks have been written
    write_csv(tmp_path / "late.csv", data.x, data.y)
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "late.csv"), "--name", "d", "--target", "label",
                                "--block-mb", "0.001", "--row-group-mb", "0.0001"],
                 "late.csv: row 390 column 'f0' has a NaN or infinite value")
    assert cli("data", "list").out.startswith("no datasets")
    assert [p.name for p in (workdir / "data").iterdir()] == []  # no staging folder either


def test_folder_glob_and_uri_sources(cli, workdir, tmp_path):
    (tmp_path / "parts").mkdir()
    for k in range(2):
        part = numbered(25, start=25 * k)
        write_csv(tmp_path / "parts" / f"p{k}.csv", part.x, part.y)
    assert cli("data", "import", str(tmp_path / "parts"), "--name", "folder", "--target", "label").code == 0
    assert cli("data", "import", str(tmp_path / "parts" / "*.csv"), "--name", "glob", "--target", "label").code == 0
    uri = (tmp_path / "parts" / "p0.csv").as_uri()
    result = cli("data", "import", uri, "--name", "uri", "--target", "label")
    assert result.code == 0 and "train 20, test 5 rows" in result.out
    shown = cli("data", "show", "folder").out
    assert "train: 40 rows" in shown and "test: 10 rows" in shown
    verified = cli("data", "verify", "glob")
    assert verified.code == 0 and verified.out.startswith("ok: 'glob' 2 files, test 10, train 40 rows")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "parts" / "*.tsv"), "--name", "x"],
                 "*.tsv: no files match")


def test_a_store_on_a_non_local_filesystem_through_the_cli(cli, workdir, csv):
    """``--store memory://...``: fsspec's in-memory filesystem behind pyarrow's filesystem layer."""
    fsspec = pytest.importorskip("fsspec")
    root = f"memory://cli-store-{workdir.name}"
    try:
        args = ["--store", root]
        assert cli("data", "import", str(csv), "--name", "m", "--target", "label", *args).code == 0
        assert "m" in cli("data", "list", *args).out
        assert "train: 32 rows" in cli("data", "show", "m", *args).out
        assert cli("data", "verify", "m", *args).out.startswith("ok: 'm' 2 files")
        # The source can live there too.
        fsspec.filesystem("memory").pipe(f"/cli-src-{workdir.name}/a.csv", csv.read_bytes())
        result = cli("data", "import", f"memory://cli-src-{workdir.name}/a.csv", "--name", "m", "--target", "label",
                     *args)
        assert result.code == 2 and "dataset 'm' already exists" in result.err
        assert cli("data", "import", f"memory://cli-src-{workdir.name}/a.csv", "--name", "m2", "--target", "label",
                   *args).code == 0
        assert cli("data", "verify", "m2", *args).out.split()[-1] == cli("data", "verify", "m", *args).out.split()[-1]
    finally:
        memory = fsspec.filesystem("memory")
        for path in (f"/cli-store-{workdir.name}", f"/cli-src-{workdir.name}"):
            if memory.exists(path):
                memory.rm(path, recursive=True)
