"""A full disk during a checkpoint (a run's, a sweep population's) or a ``sweep export`` is one line.

Each test mounts a small tmpfs (it needs root, or CAP_SYS_ADMIN: the tests run as root locally and in
CI; elsewhere they are skipped), runs the command in a new process with its folder there, and checks:
exit status 2, exactly one stderr line ``error: PATH: No space left on device``, no traceback, no
temporary folder of the failed save (``*.orbax-checkpoint-tmp*``, a staging folder) left behind; then
the tmpfs is made larger and the same command (``--resume`` for a run) completes from what was saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_subprocess

# plot=false: the curves a finished run draws in a background process would race the checks and the unmount.
TINY = ["model.hidden=16", "eval_every=20", "batch_size=32", "plot=false", "--no-progress"]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` for the block, unmounted after it whatever happens."""
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs mounts are a Linux feature")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("no mount command here: cannot make a small disk to fill")
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=60)


def grow(folder: Path, size: str) -> None:
    """Make the tmpfs on ``folder`` larger: there is space again."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True, timeout=60)


def one_line_disk_full(result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2, (result.code, result.err[-3000:])
    assert "Traceback" not in result.err, result.err[-3000:]
    assert len(lines) == 1, result.err[-3000:]
    assert lines[0].startswith("error: ") and lines[0].split(": ", 2)[2].startswith("No space left on device"), lines[0]
    return lines[0]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "orbax-checkpoint-tmp" in p.name or ".tmp" in p.name]


def test_a_full_disk_during_a_run_is_one_line_and_the_run_resumes(workdir):
    with tmpfs(workdir / "small", "300k") as disk:
        run = disk / "run"
        command = ["train", "digits_mlp", *TINY, "steps=400", "checkpoint_every=10", "--run-dir", str(run)]
        line = one_line_disk_full(run_subprocess(command))
        assert str(run) in line
        assert temporaries(disk) == []
        saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
        assert saved and max(saved) < 400  # the checkpoints written before the disk filled stay
        grow(disk, "16m")
        resumed = run_subprocess([*command, "--resume"])
        assert resumed.code == 0, resumed.err[-3000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 400
        assert temporaries(disk) == []


def test_a_full_disk_during_a_sweep_is_one_line_and_the_sweep_continues(workdir):
    with tmpfs(workdir / "small", "200k") as disk:
        folder = disk / "sweep"
        # plot=false: the plot is drawn by a detached process that may still be writing when the sweep exits
        command = ["sweep", "digits_mlp", *TINY, "steps=400", "checkpoint_every=10", "plot=false",
                   "optimizer.learning_rate=choice(0.01;0.03)", "--sweep-dir", str(folder)]
        one_line_disk_full(run_subprocess(command))
        assert temporaries(disk) == []
        grow(disk, "16m")
        again = run_subprocess(command)
        assert again.code == 0, again.err[-3000:]
        assert temporaries(disk) == []


def test_a_full_disk_during_an_export_is_one_line_and_leaves_nothing(workdir):
    folder = workdir / "sweep"
    swept = run_subprocess(["sweep", "digits_mlp", *TINY, "steps=40", "optimizer.learning_rate=choice(0.01)",
                            "--sweep-dir", str(folder)])
    assert swept.code == 0, swept.err[-3000:]
    with tmpfs(workdir / "small", "40k") as disk:
        target = disk / "exported"
        command = ["sweep", "export", str(folder), "--trial", "0", "--run-dir", str(target)]
        line = one_line_disk_full(run_subprocess(command))
        assert str(target) in line
        assert sorted(os.listdir(disk)) == []  # no run folder, no staging folder, no temporary
        grow(disk, "16m")
        again = run_subprocess(command)
        assert again.code == 0, again.err[-3000:]
        from pipeline import load_run

        model = load_run(target, which="latest")
        assert np.isfinite(np.asarray(model(np.zeros((2, 64), np.float32)))).all()


def test_a_full_disk_is_recognised_anywhere_in_an_exception_chain():
    from pipeline.train.checkpoint import DiskFull, is_disk_full

    tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing \"x\" in OCDBT database: Failed to write 2154 bytes "
                             "to file 15: No space left on device [os_error_code='28']")
    try:
        try:
            raise tensorstore
        except ValueError as exc:
            raise RuntimeError("Save Finalize thread failed") from exc
    except RuntimeError as chained:
        assert is_disk_full(chained)
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(DiskFull("x: No space left on device"))
    assert not is_disk_full(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 GiB"))
    assert not is_disk_full(OSError(13, "Permission denied"))
    assert not is_disk_full(None)
