"""A model pointed at data it cannot take fails through the CLI with one line and exit code 2."""

from __future__ import annotations

import numpy as np


def _import_npz(cli, tmp_path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x, y=y)
    result = cli("data", "import", str(path), "--name", name)
    assert result.code == 0, result.err


def _one_error_line(result) -> str:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


def test_cnn_refuses_rank4_features(cli, tmp_path):
    rng = np.random.default_rng(0)
    _import_npz(cli, tmp_path, "volumes", rng.normal(size=(100, 2, 3, 4, 5)), np.arange(100) % 2)
    line = _one_error_line(cli("train", "digits_cnn", "data=volumes", "--no-progress"))
    assert "features of shape (2, 3, 4, 5)" in line
    assert "model.name=cnn expects (L,) signals, (H, W) or (H, W, C) images" in line


def test_lm_experiment_refuses_image_dataset(cli):
    line = _one_error_line(cli("train", "text_lm", "data=digits", "--no-progress"))
    assert "features of shape (8, 8)" in line
    assert "model.name=transformer expects int tokens of shape (L,)" in line


def test_lm_experiment_refuses_float_sequences(cli, tmp_path):
    rng = np.random.default_rng(0)
    _import_npz(cli, tmp_path, "signals", rng.normal(size=(40, 16)).astype(np.float32), np.arange(40) % 3)
    line = _one_error_line(cli("train", "text_lm", "data=signals", "steps=2", "batch_size=4", "--no-progress"))
    assert "float32 features" in line
    assert "int tokens of shape (L,)" in line


def test_lm_experiment_refuses_regression_dataset(cli):
    line = _one_error_line(cli("train", "text_lm", "data=regression", "--no-progress"))
    assert "dataset 'regression'" in line


def test_token_dataset_refuses_a_non_transformer(cli, tmp_path):
    line = _one_error_line(cli("train", "digits_cnn", "data=text", "--no-progress"))
    assert "model 'cnn' returns outputs of shape (2, 256) for a batch of 2 from dataset 'text'" in line
    assert "objective 'language_modeling' expects (2, 128, 256)" in line
