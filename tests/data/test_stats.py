"""Per-feature statistics of the train split: computed at import, kept in the metadata, shown, read back."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline.data import DatasetInfo, feature_stats
from pipeline.data.sources import split_off_test
from pipeline.data.stats import RunningStats
from tests.data.conftest import numbered, write_csv


def expect_stats(stats: dict, x: np.ndarray) -> None:
    """``stats`` against numpy's float64 mean and population std of ``x`` (N, ...)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], flat.mean(axis=0), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(stats["std"], flat.std(axis=0), rtol=1e-7, atol=1e-9)
    # Stored with nine significant digits: every float32 comes back exactly.
    assert np.float32(stats["min"]) == x.min() and np.float32(stats["max"]) == x.max()


def test_streamed_csv_import_keeps_train_split_statistics(cli, store, tmp_path):
    data = numbered(300)
    data.x[:, 1] = 7.0  # a constant feature: std exactly 0
    write_csv(tmp_path / "n.csv", data.x, data.y)
    result = cli("data", "import", str(tmp_path / "n.csv"), "--name", "n", "--target", "label",
                 "--block-mb", "0.0005", "--row-group-mb", "0.0001")  # many chunks to merge
    assert result.code == 0, result.err
    info = store.info("n")
    train = store.read("n", "train").x
    expect_stats(info.feature_stats, train)
    assert info.feature_stats["std"][1] == 0.0 and info.feature_stats["mean"][1] == 7.0
    want = split_off_test(data, 0.2, 0)[0].x  # of the train split alone, not every row
    np.testing.assert_array_equal(train, want)
    lo, hi = float(want.min()), float(want.max())
    assert (info.feature_stats["min"], info.feature_stats["max"]) == (lo, hi) != (data.x.min(), data.x.max())
    mean, std = feature_stats(info)
    assert mean.shape == std.shape == (3,) and mean.dtype == np.float32
    shown = cli("data", "show", "n").out
    assert "statistics   train split, 3 values: mean " in shown and f"(1 constant), min {lo:g}, max {hi:g}" in shown
    assert cli("data", "verify", "n").code == 0


def test_npz_and_builtin_imports_keep_statistics(cli, store, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(50) % 4, x_test=x[:5] * 100, y_test=np.arange(5) % 4)
    assert cli("data", "import", str(tmp_path / "a.npz"), "--name", "a").code == 0
    info = store.info("a")
    expect_stats(info.feature_stats, x)  # the given test split does not count
    mean, std = feature_stats(info)
    assert mean.shape == (2, 3)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)
    assert cli("data", "import", "builtin:digits", "--name", "digits").code == 0
    digits = store.info("digits")
    expect_stats(digits.feature_stats, store.read("digits", "train").x)
    assert (digits.feature_stats["min"], digits.feature_stats["max"]) == (0.0, 1.0)
    assert feature_stats(digits)[0].shape == (8, 8)


def test_merging_chunks_is_numerically_stable():
    """Mean 1e8, std 1: a running sum of squares would lose every digit; the pairwise merge keeps them."""
    rng = np.random.default_rng(1)
    x = 1e8 + rng.normal(size=(1000, 2))
    stats = RunningStats()
    for chunk in np.array_split(x, 37):
        stats.update(chunk)
    stats.update(x[:0])  # an empty chunk changes nothing
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(np.sqrt(stats.m2 / stats.count), x.std(axis=0), rtol=1e-7)
    got = stats.to_dict()  # stored with nine significant digits: more than float32 features carry
    np.testing.assert_allclose(got["mean"], x.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(got["std"], x.std(axis=0), rtol=1e-7)
    assert RunningStats().to_dict() == {}


def test_datasets_without_statistics_read_as_empty(store):
    info = DatasetInfo("old", "classification", (3,), "float32", (), "int32", 2)
    old = json.loads(info.to_json())
    del old["feature_stats"]  # metadata written before the field existed
    assert DatasetInfo.from_json(json.dumps(old)).feature_stats == {}
    assert feature_stats(info) is None
    stats = {"mean": [1.0, 2.0, 3.0], "std": [0.5, 0.0, 1.0], "min": -1.0, "max": 4.0}
    again = DatasetInfo.from_json(dataclasses.replace(info, feature_stats=stats).to_json())
    assert again.feature_stats == stats


@pytest.mark.parametrize("value", [0.1, 1e-30, 3.4e38, -123456.789])
def test_stored_values_round_to_float32_exactly(value):
    stats = RunningStats()
    stats.update(np.full((2, 1), value, np.float32))
    assert np.float32(stats.to_dict()["mean"][0]) == np.float32(value)
