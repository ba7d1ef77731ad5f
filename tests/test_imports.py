"""What each command imports: the light commands never load JAX, and training loads nothing it does not
need before its first step (checkpointing, plotting and benchmarking are imported on first use)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_subprocess


def modules_after(argv: list[str], tmp_path, before_first_step: bool = False) -> dict:
    """Run ``pipeline ARGV`` in a fresh interpreter; the heavy modules loaded (at the first step, if asked).

    The recording is done by a module under tests/plugins/ that the command line imports first
    (``PIPELINE_TEST_PLUGIN``, a test-only seam of pipeline/cli.py).
    """
    plugin = "tests.plugins.loaded_at_first_step" if before_first_step else "tests.plugins.loaded_modules"
    proc = run_subprocess(argv, env={"PIPELINE_TEST_PLUGIN": plugin, "PIPELINE_STORE": str(tmp_path / "data"),
                                     "PIPELINE_RUNS": str(tmp_path / "runs")}, timeout=300)
    assert proc.code == 0, proc.err
    return json.loads(proc.out.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["data", "list"], ["runs", "list"], ["--help"], ["train", "--help"]])
def test_light_commands_import_no_jax(argv, tmp_path):
    seen = modules_after(argv, tmp_path)
    assert seen["end"] == [], seen


def test_train_imports_no_plotting_checkpointing_or_bench_before_its_first_step(tmp_path):
    seen = modules_after(["train", "digits_mlp", "steps=20", "eval_every=10", "--no-progress"], tmp_path,
                         before_first_step=True)
    assert seen["first_step"] == ["flax", "jax"], seen  # orbax, matplotlib and the bench come later if ever
    assert "orbax.checkpoint" in seen["end"]  # the final checkpoint
    assert "matplotlib" not in seen["end"]  # plots are drawn by a background process
