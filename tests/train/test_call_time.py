"""K bounded by measured time (pipeline/train/call_length.py): Ctrl-C acts within seconds on a slow
step, and a K that changes mid-run leaves every result as a fixed K gives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.train import call_length, population
from pipeline.train.call_length import CALL_SECONDS, CallLength, ladder
from tests.conftest import ROOT

# gcd(steps, eval_every) = 100: K0 = 100 whatever the measured overhead (K0 >= MIN_K = 100).
RUN = ["digits_mlp", "steps=200", "eval_every=100", "model.hidden=16", "batch_size=32", "plot=false"]
SLOW = 0.6  # seconds a step: a call of K0 = 100 steps would last 60 s


def test_the_ladder_divides_down_to_one_step_and_keeps_an_unroll():
    assert ladder(1000) == [1000, 500, 250, 125, 25, 5, 1]
    assert ladder(96) == [96, 48, 24, 12, 6, 3, 1]
    assert ladder(100, unroll=2) == [100, 50, 10, 2]  # an unrolled scan's K stays even: the same bits
    assert ladder(25, unroll=2) == [25, 5, 1]  # K0 not a multiple of the unroll: its scan is not unrolled
    assert ladder(1) == [1]


def test_k_follows_the_measured_time_of_calls():
    length = CallLength(100)
    assert length.k_at(0) == 1  # a run's first call is the probe
    length.observe(1, SLOW)
    length.set_target(length.decide())
    assert length.target == 1  # 5 steps would take 3 s: over the 2 s bound
    fast = CallLength(100)
    fast.observe(1, 1e-3)
    fast.set_target(fast.decide())
    assert fast.target == 100 and fast.k_at(1) == 1 and fast.k_at(100) == 100  # up once a call can start there
    fast.observe(100, 100 * CALL_SECONDS / 40)  # the machine got 40x slower: down at once to <= 2 s
    fast.set_target(fast.decide())
    assert fast.target == 25
    fixed = CallLength(100, adaptive=False)
    fixed.observe(100, 1000.0)
    assert fixed.decide() == 100 and fixed.k_at(0) == 100  # steps_per_call=100 set by the user: kept


def metrics(run_dir: Path) -> pd.DataFrame:
    table = pd.read_parquet(run_dir / "metrics.parquet").drop(columns="wall_s")
    return table.sort_values(["step", "split", "name"]).reset_index(drop=True)


def test_k_changing_mid_run_gives_the_results_of_a_fixed_k(cli, workdir, monkeypatch):
    fixed = cli("train", *RUN, "steps_per_call=100", "--run-dir", str(workdir / "fixed"), "--no-progress", "--json")
    assert fixed.code == 0, fixed.err
    schedule = iter([5, 100, 25, 1, 50, 100, 5] * 50)
    monkeypatch.setattr(CallLength, "decide", lambda self: next(schedule))
    ks: list[int] = []
    step = population.SoloPopulation.step
    monkeypatch.setattr(population.SoloPopulation, "step", lambda self, k=None: ks.append(k) or step(self, k))
    moved = cli("train", *RUN, "--run-dir", str(workdir / "moved"), "--no-progress", "--json")
    assert moved.code == 0, moved.err
    assert len(set(ks)) >= 4 and sum(ks) == 200, ks
    assert json.loads(moved.out.splitlines()[-1])["metrics"] == json.loads(fixed.out.splitlines()[-1])["metrics"]
    pd.testing.assert_frame_equal(metrics(workdir / "moved"), metrics(workdir / "fixed"))


def test_every_call_of_the_smallest_k_over_the_bound_is_said_once(cli, workdir, monkeypatch):
    monkeypatch.setattr(call_length, "CALL_SECONDS", 1e-9)  # no call is ever short enough
    r = cli("train", *RUN, "--run-dir", str(workdir / "run"), "--no-progress")
    assert r.code == 0, r.err
    notes = [line for line in r.err.splitlines() if line.startswith("note: a call of 1 step takes")]
    assert len(notes) == 1 and "Ctrl-C" in notes[0], r.err


def slow_run(args: list[str], sleep: float, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PIPELINE_TEST_PLUGIN": "tests.plugins.slow_step", "PIPELINE_TEST_STEP_SLEEP": str(sleep)}
    if log is not None:
        env["PIPELINE_TEST_STEP_LOG"] = str(log)
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def test_sigint_stops_a_slow_run_within_seconds_and_it_resumes_exactly(workdir):
    reference = workdir / "reference"
    code, out, err = finished(slow_run([*RUN, "--run-dir", str(reference), "--no-progress", "--json"], 0.0))
    assert code == 0, err
    want = json.loads(out.splitlines()[-1])["metrics"]

    run_dir, log = workdir / "slow", workdir / "steps.log"
    proc = slow_run([*RUN, "--run-dir", str(run_dir), "--no-progress"], SLOW, log)
    deadline = time.time() + 300
    while not log.exists() or len(log.read_text().splitlines()) < 3:  # a few steps in: training for real
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the slow run made no steps"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    code, out, err = finished(proc)
    took = time.time() - sent
    assert code == 130, err
    assert took < 10.0, f"exited {took:.1f} s after SIGINT (a call of K0 would last {100 * SLOW:.0f} s)"
    assert "interrupted at step" in err and "--resume" in err, err

    code, out, err = finished(slow_run(["--run-dir", str(run_dir), "--resume", "--no-progress", "--json"], 0.0))
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["metrics"] == want
    pd.testing.assert_frame_equal(metrics(run_dir), metrics(reference))

