"""Progress for people and logs: plain lines outside a terminal, the latest evaluation, sweep counts."""

from __future__ import annotations

import json
import os
import re
import signal

import pipeline
from pipeline.hooks import Hook
from pipeline.track.progress import Progress, sweep_work

LINE = re.compile(r"^step (\d+)/(\d+)  loss (-|\d+\.\d{4})  [\d,]+ steps/s(  .*)?$")
SWEEP = ["digits_mlp", "optimizer.learning_rate=choice(1e-3;1e-2)", "steps=200", "eval_every=50",
         "checkpoint_every=50", "model.hidden=8", "batch_size=32", "plot=false"]


def progress_lines(err: str) -> list[tuple[int, int, str]]:
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert all(LINE.match(line) for line in lines), lines
    return [(int(m[1]), int(m[2]), m[4] or "") for m in map(LINE.match, lines)]


def test_outside_a_terminal_progress_is_plain_lines_ending_on_the_latest_evaluation(cli, monkeypatch):
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", "0")  # a line at every update
    r = cli("train", "digits_mlp", "steps=200", "eval_every=100", "model.hidden=16", "plot=false", "--json")
    assert r.code == 0, r.err
    assert "━" not in r.err and "…" not in r.err  # no bar cut to 80 columns
    lines = progress_lines(r.err)
    assert lines[-1][:2] == (200, 200) and len(lines) > 2
    metrics = json.loads(r.out.splitlines()[-1])["metrics"]
    latest = f"  val/accuracy {metrics['val/accuracy']:.4g}  test/accuracy {metrics['test/accuracy']:.4g}"
    assert lines[-1][2] == latest  # the final evaluation, not the one before it
    steps = [step for step, _, _ in lines]
    assert steps == sorted(steps)


def test_every_ten_seconds_by_default_and_a_last_line(cli):
    r = cli("train", "digits_mlp", "steps=100", "eval_every=100", "model.hidden=16", "plot=false")
    assert r.code == 0, r.err
    assert progress_lines(r.err)[-1][:2] == (100, 100)


def test_a_bad_progress_interval_is_one_line(cli, monkeypatch):
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", "often")
    r = cli("train", "digits_mlp", "steps=20", "eval_every=10", "plot=false")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert r.err.startswith("error: bad value for PIPELINE_PROGRESS_SECONDS: 'often'"), r.err


def test_sweep_work_counts_finished_work_on_both_sides_and_never_shows_more_than_the_total(capsys):
    # planned 100 each: one done, one stopped at 40, one resumed at 60, one pending
    assert sweep_work([(100, 100, True), (100, 40, True), (100, 60, False), (100, 0, False)]) == (340, 200)
    with Progress(340, done=200) as bar:
        bar.update(400, 0.5)
    assert capsys.readouterr().err.splitlines()[-1].startswith("step 340/340  loss 0.5000")


class SigintAtFirstCheckpoint(Hook):
    sent = [False]

    def on_checkpoint(self, step: int, best: bool) -> None:
        if not self.sent[0]:
            self.sent[0] = True
            os.kill(os.getpid(), signal.SIGINT)  # the sweep's flag takes it: saved at the next boundary


def test_a_resumed_sweep_counts_its_earlier_work_and_never_more_than_the_total(cli, workdir, monkeypatch):
    folder = workdir / "sweep"
    try:
        pipeline.sweep(SWEEP[0], overrides=SWEEP[1:], sweep_dir=folder, vmap=True,
                       hooks=lambda trial: [SigintAtFirstCheckpoint()])
    except pipeline.PipelineError as exc:
        assert "interrupted at step" in str(exc)
    else:
        raise AssertionError("the sweep was not interrupted")
    monkeypatch.setenv("PIPELINE_PROGRESS_SECONDS", "0")
    r = cli("sweep", *SWEEP, "--vmap", "--sweep-dir", str(folder))
    assert r.code == 0, r.err
    lines = progress_lines(r.err)
    assert all(done <= total for done, total, _ in lines), lines
    assert lines[0][0] > 0  # the steps made before the interrupt count
    assert lines[-1][:2] == (400, 400)  # and the count ends on the total: nothing counted twice, nothing lost
