"""``pipeline predict`` and ``pipeline export``: the trained model used outside training.

Predictions written by ``predict`` equal the loaded model's (``load_run(...)(x)``) row for row, from a
stored split, a CSV with an id column, Parquet and an .npz; a StableHLO export runs in a Python
process where ``pipeline`` cannot be imported and an ONNX export in onnxruntime, both giving the
loaded model's outputs. Bad input is one line, a non-zero exit and no file. Two tiny runs are
trained once for the module: the digits MLP (a built-in, classes "0".."9") and an MLP regressor on a
frame with named columns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.data import Store
from tests.conftest import records_under, run_cli

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

TINY = {"steps": 20, "eval_every": 10, "plot": False}
FEATURES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    with records_under(tmp_path_factory.mktemp("predict-export")) as root:
        yield root


@pytest.fixture(scope="module")
def digits_run(home) -> Path:
    overrides = {**TINY, "model.hidden": (16,)}
    return pipeline.fit("digits_mlp", overrides=overrides, run_dir=home / "runs" / "digits").run_dir


@pytest.fixture(scope="module")
def regression_frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 8)).astype(np.float32) * 3.0 + 1.0  # off-centre: normalization matters
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["y"] = (x @ rng.normal(size=8)).astype(np.float32)
    return frame


@pytest.fixture(scope="module")
def regression_run(home, regression_frame) -> Path:
    return pipeline.fit("regression_mlp", data=regression_frame, target="y", overrides=TINY,
                        run_dir=home / "runs" / "regression").run_dir


def one_line_error(result) -> str:
    assert result.code != 0, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


def probabilities(table, names: list[str]) -> np.ndarray:
    return np.stack([table.column(f"proba_{n}").to_numpy() for n in names], axis=1)


# -- predict ----------------------------------------------------------------------------------------

def test_predict_on_a_stored_split_equals_the_loaded_model_row_for_row(home, digits_run):
    out = home / "preds" / "digits.parquet"
    # 50 rows a call: row groups joined and cut, the last batch padded.
    result = run_cli("predict", str(digits_run), "digits", "--split", "test", "--out", str(out), "--batch-rows", "50")
    assert result.code == 0, result.err
    assert "rows/s" in result.err.strip().splitlines()[-1]  # plain progress lines: stderr is not a terminal
    table = pq.read_table(out)
    model = pipeline.load_run(digits_run)
    x = Store().read("digits", "test").x
    assert table.column_names == ["row", "prediction"] + [f"proba_{n}" for n in model.class_names]
    np.testing.assert_array_equal(table.column("row").to_numpy(), np.arange(len(x)))
    logits = np.asarray(model(x))
    # Class names as predict gives them ("0".."9" are integers), the class of the largest output.
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), model.predict(x))
    np.testing.assert_array_equal(table.column("prediction").to_numpy(),
                                  np.array(model.class_names).astype(int)[logits.argmax(-1)])
    np.testing.assert_allclose(probabilities(table, model.class_names), model.predict_proba(x), rtol=1e-6, atol=1e-7)
    written = json.loads(table.schema.metadata[b"pipeline.predict"])
    assert written["class_names"] == model.class_names and written["which"] == "best"


def test_predict_on_a_csv_with_an_id_column_and_on_parquet(home, regression_run, regression_frame, tmp_path):
    model = pipeline.load_run(regression_run, which="latest")
    new = regression_frame.sample(frac=1.0, random_state=1).iloc[:123]
    expected = np.asarray(model(new[FEATURES].to_numpy(np.float32)))[:, 0]
    shuffled = new[["y", *reversed(FEATURES)]].assign(key=[f"k{i}" for i in range(len(new))])  # any column order
    shuffled.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "from-csv.parquet"
    result = run_cli("predict", str(regression_run), str(tmp_path / "new.csv"), "--id", "key", "--which", "latest",
                     "--out", str(out), "--batch-rows", "32", "--no-progress")
    assert result.code == 0, result.err
    assert result.err == ""
    table = pq.read_table(out)
    assert table.column_names == ["key", "prediction"]
    assert table.column("key").to_pylist() == list(shuffled["key"])
    np.testing.assert_allclose(table.column("prediction").to_numpy(), expected, rtol=1e-6, atol=1e-6)

    # The Python surface, on Parquet without the target (row numbers instead of an id).
    new[FEATURES].to_parquet(tmp_path / "new.parquet", index=False)
    done = pipeline.predict(regression_run, tmp_path / "new.parquet", out=tmp_path / "from-parquet.parquet",
                            which="latest")
    assert done.rows == len(new)
    again = pq.read_table(done.out)
    np.testing.assert_array_equal(again.column("row").to_numpy(), np.arange(len(new)))
    np.testing.assert_allclose(again.column("prediction").to_numpy(), expected, rtol=1e-6, atol=1e-6)


def test_predict_on_an_npz_of_flat_rows(home, digits_run, tmp_path):
    x = Store().read("digits", "train").x[:77]
    np.savez(tmp_path / "new.npz", x=x.reshape(len(x), -1))
    done = pipeline.predict(digits_run, str(tmp_path / "new.npz"), out=tmp_path / "p.parquet")
    table = pq.read_table(done.out)
    model = pipeline.load_run(digits_run)
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), model.predict(x))
    np.testing.assert_allclose(probabilities(table, model.class_names), model.predict_proba(x), rtol=1e-6, atol=1e-7)


# -- export -----------------------------------------------------------------------------------------

# Runs in a process that reads site-packages but not its .pth files (-S: no editable install of this
# repository) and ignores PYTHONPATH and the working folder (-I): plain jax only.
LOAD_STABLEHLO = textwrap.dedent("""
    import sys
    sys.path.append(sys.argv[1])
    try:
        import pipeline
        print("pipeline importable from", pipeline.__file__)
        sys.exit(3)
    except ImportError:
        pass
    import jax, numpy as np
    with open(sys.argv[2], "rb") as f:
        exported = jax.export.deserialize(f.read())
    x = np.load(sys.argv[3])
    np.save(sys.argv[4], np.asarray(exported.call(x)))
""")


@pytest.mark.parametrize("run", ["digits_run", "regression_run"])
def test_a_stablehlo_export_runs_with_plain_jax_in_a_fresh_process(digits_run, regression_run, run, tmp_path):
    run_dir = {"digits_run": digits_run, "regression_run": regression_run}[run]
    exported = tmp_path / "model.stablehlo"
    result = run_cli("export", str(run_dir), "--format", "stablehlo", "--out", str(exported))
    assert result.code == 0, result.err
    model = pipeline.load_run(run_dir)
    info = model._surface.info
    for rows in (1, 7):  # any batch size
        x = np.random.default_rng(rows).normal(size=(rows, *info.feature_shape)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        script = tmp_path / "load.py"
        script.write_text(LOAD_STABLEHLO)
        proc = subprocess.run([sys.executable, "-I", "-S", str(script), sysconfig.get_paths()["purelib"],
                               str(exported), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("run", ["digits_run", "regression_run"])
def test_an_onnx_export_runs_in_onnxruntime(digits_run, regression_run, run, tmp_path):
    pytest.importorskip("jax2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    run_dir = {"digits_run": digits_run, "regression_run": regression_run}[run]
    done = pipeline.export(run_dir, format="onnx", out=tmp_path / "model.onnx")
    model = pipeline.load_run(run_dir)
    info = model._surface.info
    session = onnxruntime.InferenceSession(str(done.out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == list(info.class_names)
    for rows in (1, 9):
        x = np.random.default_rng(rows).normal(size=(rows, *info.feature_shape)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], np.asarray(model(x)), rtol=1e-4, atol=1e-4)


# -- bad input --------------------------------------------------------------------------------------

def test_a_source_missing_a_feature_column_is_one_line_and_writes_nothing(cli, regression_run, regression_frame,
                                                                         tmp_path):
    regression_frame.drop(columns=["f3"]).to_csv(tmp_path / "short.csv", index=False)
    out = tmp_path / "out" / "preds.parquet"
    line = one_line_error(cli("predict", str(regression_run), str(tmp_path / "short.csv"), "--out", str(out)))
    assert "no column 'f3'" in line and "short.csv" in line
    assert not (tmp_path / "out").exists()


def test_a_column_the_model_was_not_trained_on_is_one_line(cli, regression_run, regression_frame, tmp_path):
    regression_frame.assign(extra=1.0).to_csv(tmp_path / "wide.csv", index=False)
    out = tmp_path / "preds.parquet"
    line = one_line_error(cli("predict", str(regression_run), str(tmp_path / "wide.csv"), "--out", str(out)))
    assert "column 'extra'" in line and "--id" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.csv"]


def test_a_dataset_of_another_kind_is_one_line(home, regression_run, tmp_path):
    out = tmp_path / "preds.parquet"
    line = one_line_error(run_cli("predict", str(regression_run), "digits", "--out", str(out)))
    assert "dataset 'digits'" in line and "not the model's kind of data" in line
    assert not out.exists()


def test_export_of_a_run_folder_without_checkpoints_is_one_line(cli, digits_run, tmp_path):
    bare = tmp_path / "bare-run"
    bare.mkdir()
    for name in ("config.json", "dataset.json"):
        shutil.copy(digits_run / name, bare / name)
    out = tmp_path / "model.stablehlo"
    line = one_line_error(cli("export", str(bare), "--format", "stablehlo", "--out", str(out)))
    assert str(bare) in line and "checkpoint" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare-run"]
    assert sorted(p.name for p in bare.iterdir()) == ["config.json", "dataset.json"]
