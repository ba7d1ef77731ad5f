"""Damaged datasets: ``data verify`` names the file (and row), and so does every reader that meets it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import DataError
from pipeline.data.stream import StreamingReader
from tests.data.conftest import numbered, rewrite, snapshot, write_numbered


@pytest.fixture
def stored(store):
    """Dataset 'n' (130 train rows in 4 files, 20 test rows) and the path of its second train file."""
    write_numbered(store, "n")
    return store, store.files("n", "train")[1]


def verify_fails(cli, workdir, *fragments: str) -> str:
    before = snapshot(workdir / "data")
    result = cli("data", "verify", "n")
    assert result.code == 2, (result.out, result.err)
    line = result.err.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in line, line
    assert snapshot(workdir / "data") == before
    return line


def rows_of_second_file() -> tuple[np.ndarray, np.ndarray]:
    part = numbered(80)
    return part.x[40:].copy(), part.y[40:].copy()


def test_a_sound_dataset_verifies(cli, stored):
    store, _ = stored
    result = cli("data", "verify", "n")
    assert result.code == 0
    assert result.out.strip() == (f"ok: 'n' 5 files, test 20, train 130 rows, {store.size_bytes('n'):,} bytes, "
                                  f"fingerprint {store.info('n').fingerprint}")


def test_schema_drift(cli, workdir, stored):
    _, path = stored
    x, y = rows_of_second_file()
    rewrite(path, y=y.astype(np.int64))
    verify_fails(cli, workdir, "part-00001.parquet: column 'y' is int64 but the dataset has int32")
    rewrite(path, x=np.concatenate([x, x[:, :1]], axis=1), y=y)
    verify_fails(cli, workdir,
                 "part-00001.parquet: column 'x' is float tensor [4] but the dataset has float tensor [3]")


def test_metadata_that_disagrees(cli, workdir, stored):
    _, path = stored
    meta = json.loads(pq.read_schema(path).metadata[b"pipeline"])
    meta["class_names"] = ["x", "y", "z"]
    rewrite(path, metadata={b"pipeline": json.dumps(meta).encode()})
    verify_fails(cli, workdir, "part-00001.parquet: metadata disagrees with the dataset's (class_names is")
    rewrite(path, metadata={})
    verify_fails(cli, workdir, "part-00001.parquet: no 'pipeline' metadata")


def test_truncated_and_corrupt_files(cli, workdir, stored):
    _, path = stored
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    verify_fails(cli, workdir, "part-00001.parquet: not a readable Parquet file")
    with open(path, "wb") as f:
        f.write(b"\x00" * len(data))
    verify_fails(cli, workdir, "part-00001.parquet: not a readable Parquet file")


def test_nan_features(cli, workdir, stored):
    _, path = stored
    x, y = rows_of_second_file()
    x[13, 2] = np.nan
    rewrite(path, x=x)
    verify_fails(cli, workdir, "part-00001.parquet: row 13 has a NaN or infinite feature value")


def test_labels_outside_the_class_range(cli, workdir, stored):
    _, path = stored
    x, y = rows_of_second_file()
    y[31] = 7
    rewrite(path, y=y)
    verify_fails(cli, workdir, "part-00001.parquet: row 31 has label 7 outside the 3 classes")


def test_empty_split(cli, workdir, stored):
    store, _ = stored
    [test_file] = store.files("n", "test")
    rewrite(test_file, x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int32))
    verify_fails(cli, workdir, "n/test: the test split is empty")
    shutil.rmtree(store.path("n", "test"))
    verify_fails(cli, workdir, "the metadata lists split 'test' but there is no such folder")


def test_changed_values_and_missing_files(cli, workdir, stored):
    store, path = stored
    x, y = rows_of_second_file()
    x[0, 0] += 1.0  # finite, right schema, right metadata: only the fingerprint can tell
    rewrite(path, x=x)
    recorded = store.info("n").fingerprint
    verify_fails(cli, workdir, "content fingerprint sha256:", f"differs from the recorded {recorded}")
    (workdir / "data" / "n" / "train" / "part-00003.parquet").unlink()
    verify_fails(cli, workdir, "n/train: 120 rows in the files but the metadata records 130")


def test_readers_meet_the_same_errors(cli, workdir, stored):
    """The device-resident read, the streaming reader and training all stop at the damaged file."""
    store, path = stored
    x, y = rows_of_second_file()
    x[5, 1] = np.inf
    rewrite(path, x=x)
    with pytest.raises(DataError, match=r"part-00001.parquet: row 5 has a NaN or infinite feature value"):
        store.read("n", "train")
    with StreamingReader(store, "n", "train", batch_size=10, seed=0, shuffle_buffer=20) as reader:
        with pytest.raises(DataError, match=r"part-00001.parquet: row 5 has a NaN or infinite feature value"):
            for _ in zip(range(3 * reader.steps_per_epoch), reader.iterate(0)):
                pass
    for budget in ("data.max_device_bytes=1000000", "data.max_device_bytes=0"):  # resident, then streamed
        result = cli("train", "digits_mlp", "data=n", "steps=30", "batch_size=10", budget, "--no-progress")
        assert result.code == 2 and "Traceback" not in result.err
        assert result.err.strip() == "error: " + str(path) + ": row 5 has a NaN or infinite feature value"
    rewrite(path, x=x[:, :2].copy(), y=y)
    with pytest.raises(DataError, match=r"part-00001.parquet: column 'x' is float tensor \[2\]"):
        StreamingReader(store, "n", "train", batch_size=10, seed=0)
    result = cli("train", "digits_mlp", "data=n", "steps=5", "batch_size=10", "--no-progress")
    assert result.code == 2 and "part-00001.parquet: column 'x' is float tensor [2]" in result.err


def test_a_newer_format_is_refused(cli, workdir, stored):
    store, path = stored
    for p in store.files("n", "train") + store.files("n", "test"):
        meta = json.loads(pq.read_schema(p).metadata[b"pipeline"])
        meta["format_version"] = 99
        rewrite(p, metadata={b"pipeline": json.dumps(meta).encode()})
    verify_fails(cli, workdir, "part-00000.parquet: written by a newer pipeline (format version 99")


def test_plain_pyarrow_still_reads_what_verify_rejects(stored):
    """Damage is reported by the pipeline; the files themselves stay ordinary Parquet."""
    _, path = stored
    x, y = rows_of_second_file()
    rewrite(path, y=y.astype(np.int64))
    assert pq.read_table(path).schema.field("y").type == pa.int64()
