"""Shared fixtures: an isolated store and runs root, and the CLI in-process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent

# Commands run in-process turn on JAX's persistent compilation cache: keep the tests' entries
# out of the user's cache, in one folder per test session.
os.environ.setdefault("PIPELINE_COMPILE_CACHE", tempfile.mkdtemp(prefix="pipeline-test-cache-"))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh folder holding the store (data/) and runs (runs/), set through the environment."""
    monkeypatch.setenv("PIPELINE_STORE", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_RUNS", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture
def cli(workdir, capsys):
    """Run ``pipeline ARGS...`` in this process (no re-import of JAX); returns code, stdout, stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> Result:
    """Run ``python -m pipeline ARGS...`` as a user would, in a separate process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def wait_for(path: Path, seconds: float = 120.0) -> Path:
    """A file a background process writes (plots are drawn after a run returns)."""
    import time

    deadline = time.time() + seconds
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.1)
    return path
