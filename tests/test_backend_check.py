"""A backend ``JAX_PLATFORMS`` names that cannot start here is one line listing those that can, a non-zero
exit, and nothing made (no store, no run folder). JAX reads the variable when it is imported: a new process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_subprocess

NVIDIA_GPU = Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


@pytest.mark.parametrize("platform", [
    pytest.param("cuda", marks=pytest.mark.skipif(NVIDIA_GPU, reason="this machine has an NVIDIA GPU")),
    "nonesuch",
])
def test_a_backend_that_does_not_start_is_one_line_and_nothing_is_made(tmp_path, platform):
    env = {"JAX_PLATFORMS": platform, "PIPELINE_STORE": str(tmp_path / "data"), "PIPELINE_RUNS": str(tmp_path / "runs")}
    r = run_subprocess(["train", "digits_mlp", "steps=10", "--no-progress"], env, timeout=300)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.err, (r.code, r.err)
    assert lines[0].startswith(f"error: JAX_PLATFORMS={platform} names a backend that does not start on this machine")
    assert "backends that start here: cpu" in lines[0] and "pipeline[cuda]" in lines[0]
    assert os.listdir(tmp_path) == []  # no store, no runs root, no run folder
