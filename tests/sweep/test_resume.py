"""An interrupted sweep (Ctrl-C, then a kill) resumes from its checkpoints to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.conftest import ROOT
from tests.sweep.conftest import pipeline, read_sweep, sweep

# Two groups (two widths) of two members; checkpoints every 20 of 2000 steps; at step 100 the worse
# member of each population stops and the population is repacked to one member.
ARGS = ["model.hidden=choice(8;16)", "optimizer.learning_rate=choice(1e-3;1e-2)", "steps=2000",
        "eval_every=20", "checkpoint_every=20", "batch_size=32", "--rungs", "100", "--vmap", "--no-progress"]


def checkpoint_step(folder: Path) -> int:
    """The step of the newest complete population checkpoint in ``folder`` (0 when there is none).

    Orbax writes a step into a temporary folder and renames it to the bare step number when complete.
    """
    return max([0] + [int(p.name) for p in folder.glob("checkpoints/g*-c*/*") if p.name.isdigit()])


def start_and_interrupt(folder: Path, sig: int, after_step: int) -> subprocess.CompletedProcess:
    """Start the sweep in a new process; send ``sig`` once a checkpoint past ``after_step`` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "digits_mlp", *ARGS,
                             "--sweep-dir", str(folder)], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while checkpoint_step(folder) <= after_step:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_interrupted_sweep_resumes_to_the_uninterrupted_result(home):
    reference = sweep("digits_mlp", *ARGS)
    folder = home / "interrupted"

    stopped = start_and_interrupt(folder, signal.SIGINT, 0)
    first = checkpoint_step(folder)
    assert stopped.returncode == 130
    assert f"interrupted at step {first} of group 0" in stopped.stderr  # saved where it stopped
    assert f"--sweep-dir {folder}" in stopped.stderr
    assert 0 < first < 2000
    statuses = {r["status"] for r in read_sweep(folder).trials}
    assert statuses <= {"running", "pending"}

    killed = start_and_interrupt(folder, signal.SIGKILL, 100)  # resumes, then is killed after the rung
    assert killed.returncode == -signal.SIGKILL
    assert checkpoint_step(folder) > 100

    r = pipeline("sweep", "digits_mlp", *ARGS, "--sweep-dir", str(folder))
    assert r.code == 0, r.err
    resumed = read_sweep(folder)
    # Finished populations keep their final checkpoint (for `pipeline sweep export`), nothing else.
    assert sorted(p.name for p in folder.glob("checkpoints/*")) == ["g0-c0", "g1-c0"]
    assert all(max(int(s.name) for s in p.iterdir() if s.name.isdigit()) == 2000
               for p in folder.glob("checkpoints/*"))
    for a, b in zip(resumed.trials, reference.trials, strict=True):
        a.pop("wall_s"), b.pop("wall_s")
        assert a == b
    got = pq.read_table(folder / "curves.parquet")
    want = pq.read_table(reference.folder / "curves.parquet")
    assert sorted((r["status"], r["steps"]) for r in resumed.trials) == [("done", 2000)] * 2 + [("stopped", 100)] * 2
    # Train loss and accuracy at every step, val and test loss and accuracy every 20: no row lost or doubled.
    assert got.num_rows == want.num_rows == sum(2 * r["steps"] + 4 * (r["steps"] // 20) for r in resumed.trials)
    assert got.equals(want)
    np.testing.assert_array_equal(np.asarray(got.column("value")), np.asarray(want.column("value")))
