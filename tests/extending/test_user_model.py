"""A model and an objective defined in a user's experiment file: train, evaluate, sweep, bench, load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.data import Store
from tests.conftest import run_cli
from tests.extending.conftest import QUICK
from tests.sweep.conftest import read_sweep


def train_json(home: Path, *args: str) -> dict:
    r = run_cli("train", str(home / "resmlp.py"), *QUICK, *args, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(home) -> dict:
    return train_json(home, "--run-dir", str(home / "runs" / "first"))


def test_trains_from_a_file_outside_the_repository_with_its_own_objective(trained):
    assert set(trained["metrics"]) == {f"{split}/{name}" for split in ("test", "val")
                                       for name in ("loss", "error", "accuracy")}
    assert trained["metrics"]["test/accuracy"] == pytest.approx(1 - trained["metrics"]["test/error"])
    assert trained["metrics"]["test/accuracy"] > 0.8
    # The objective's own metric, lower is better, picked the best checkpoint (on the validation split).
    t = pq.read_table(Path(trained["run_dir"]) / "metrics.parquet").to_pandas()
    errors = t[(t.split == "val") & (t.name == "error")].set_index("step")["value"]
    assert trained["best"]["metric"] == "error" and trained["best"]["value"] == pytest.approx(errors.min())
    assert trained["best"]["step"] == int(errors.idxmin())


def numpy_eval_forward(model, x: np.ndarray) -> np.ndarray:
    """The ResMLP in eval mode by hand: batch norm on its running statistics, no dropout."""
    def dense(layer, h):
        return h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)

    h = dense(model.embed, x.reshape(len(x), -1).astype(np.float64))
    for block in model.blocks:
        bn = block.norm
        mean, var = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
        normed = (h - mean) / np.sqrt(var + bn.epsilon) * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
        h = h + np.maximum(dense(block.linear, normed), 0)
    return dense(model.head, h)


def test_evaluation_is_deterministic_without_dropout_and_with_running_statistics(trained, home):
    model = pipeline.load_run(trained["run_dir"], which="latest")
    test = Store(home / "data").read("digits", "test")
    first, second = np.asarray(model(test.x)), np.asarray(model(test.x))
    np.testing.assert_array_equal(first, second)
    assert float(np.abs(np.asarray(model.blocks[0].norm.mean[...])).sum()) > 0  # statistics were learned
    np.testing.assert_allclose(first, numpy_eval_forward(model, test.x), rtol=1e-4, atol=1e-4)
    accuracy = float((first.argmax(-1) == test.y).mean())
    assert accuracy == pytest.approx(trained["metrics"]["test/accuracy"], abs=1e-9)


def test_overrides_reach_the_models_own_fields_and_unknown_ones_list_them(home):
    r = run_cli("train", str(home / "resmlp.py"), "model.depth=3", *QUICK)
    assert r.code == 2 and r.err.count("\n") == 1
    assert "unknown config key 'model.depth'; model 'resmlp' has the fields: name, width, blocks, dropout" in r.err
    summary = train_json(home, "model.width=16", "model.blocks=1", "steps=20")
    saved = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert saved["config"]["model"] == {"name": "resmlp", "width": 16, "blocks": 1, "dropout": 0.1}
    assert pipeline.load_run(summary["run_dir"]).embed.kernel.shape == (64, 16)


@pytest.mark.heavy
def test_a_vmapped_population_of_the_user_model_equals_no_vmap(home):
    swept = [run_cli("sweep", str(home / "resmlp.py"), "steps=40", "eval_every=20", "--no-progress", "--json",
                     *flag) for flag in (["--vmap"], ["--no-vmap"])]
    for r in swept:
        assert r.code == 0, r.err
    a, b = (read_sweep(Path(json.loads(r.out.strip().splitlines()[-1])["sweep_dir"])) for r in swept)
    assert len(a.trials) == 6 and a.trials[0]["status"] == "done"
    assert json.loads((a.folder / "summary.json").read_text())["populations"] == 1  # one vmapped program
    for x, y in zip(a.trials, b.trials, strict=True):
        for column in ("final_test_loss", "final_test_error", "best_test_error"):
            assert x[column] == pytest.approx(y[column], rel=1e-5, abs=1e-6), column
    np.testing.assert_allclose(a.curve(3)[1], b.curve(3)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_benchmarks_with_flops_from_xlas_cost_analysis(home):
    out = home / "bench"
    r = run_cli("bench", str(home / "resmlp.py"), "--peers", "pipeline,jax_bare,torch_eager", "--out", str(out))
    assert r.code == 0, r.err
    rows = {row["impl"]: row for row in pq.read_table(out / "bench.parquet").to_pylist()}
    pipe, bare = rows["pipeline"], rows["jax_bare"]
    assert pipe["status"] == "ok" and pipe["family"] == "resmlp" and pipe["point"] == "resmlp"
    assert pipe["flops_analytic"] is None  # the family registers no count of its own
    assert pipe["flops_model"] == bare["flops_xla"] > 0  # so XLA's count of the plain step is the model's
    assert rows["torch_eager"]["status"] in ("unavailable", "not installed")
