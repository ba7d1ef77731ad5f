"""``pipeline sweep export`` is atomic: a refusal changes nothing, a kill leaves nothing or the whole run.

Kills use the test hook ``PIPELINE_TEST_PAUSE_AT=STAGE`` (``pipeline.data.commit.pause_at``): the
export prints ``paused at STAGE`` on stderr and sleeps there, and the test SIGKILLs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.durable.folder_locks import folder_lock
from pipeline.durable.staging import collect_abandoned, new_staging
from tests.conftest import ROOT
from tests.sweep.conftest import TINY, pipeline, sweep

ONE = ["optimizer.learning_rate=choice(0.01)"]  # a sweep of exactly one trial


@pytest.fixture(scope="module")
def swept(home) -> Path:
    return sweep("digits_mlp", *TINY, *ONE, "--no-vmap").folder


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (itself included): kind, mode, and size and content hash of files."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", info.st_mode)
        else:
            found[rel] = ("file", info.st_mode, info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def one_line(result, *fragments: str) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err and len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def export(swept: Path, *args: str):
    return pipeline("sweep", "export", str(swept), "--trial", "0", *args)


def killed_at(stage: str, swept: Path, *args: str, timeout: float = 300) -> None:
    """Run the export in a new process, SIGKILL it once it says ``paused at STAGE``."""
    env = {**os.environ, "PIPELINE_TEST_PAUSE_AT": stage}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "export", str(swept), "--trial", "0", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + timeout, []
    try:
        while time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 0.2)[0]:
                line = proc.stderr.readline()
                if line.startswith(f"paused at {stage}"):
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(timeout=60) == -signal.SIGKILL
                    return
                if not line:
                    break
                seen.append(line)
        raise AssertionError(f"the export never paused at {stage}: {''.join(seen)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def staging_of(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.tmp-*"))


def check_loads(folder: Path) -> None:
    from pipeline import load_run

    model = load_run(folder, which="latest")
    assert np.isfinite(np.asarray(model(np.zeros((2, 64), np.float32)))).all()
    assert json.loads((folder / "summary.json").read_text())["run_dir"] == str(folder)


# -- refusals ----------------------------------------------------------------------------------------
def test_a_refused_export_leaves_a_foreign_folder_byte_for_byte(swept, tmp_path):
    foreign = tmp_path / "photos"
    (foreign / "2024").mkdir(parents=True)
    (foreign / "a.jpg").write_bytes(b"\xff\xd8 not really a picture")
    (foreign / "2024" / "b.txt").write_text("keep me\n")
    (foreign / ".hidden").write_text("me too\n")
    before, beside = snapshot(foreign), sorted(os.listdir(tmp_path))
    one_line(export(swept, "--run-dir", str(foreign)), str(foreign), "exists and is not empty")
    assert snapshot(foreign) == before  # no .lock, no config.json, nothing
    assert sorted(os.listdir(tmp_path)) == beside  # no staging folder beside it either


def test_a_refused_export_leaves_a_run_and_a_file_as_they_were(swept, tmp_path):
    run = tmp_path / "run"
    assert export(swept, "--run-dir", str(run)).code == 0
    before = snapshot(run)
    one_line(export(swept, "--run-dir", str(run)), "already holds a run")
    assert snapshot(run) == before
    plain = tmp_path / "notes.txt"
    plain.write_text("a file\n")
    one_line(export(swept, "--run-dir", str(plain)), "exists and is not a folder")
    assert plain.read_text() == "a file\n"
    assert staging_of(run) == [] and staging_of(plain) == []


def test_an_empty_folder_receives_the_export(swept, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = export(swept, "--run-dir", str(empty))
    assert r.code == 0, r.err
    assert r.out.strip() == str(empty)
    assert staging_of(empty) == []
    check_loads(empty)


# -- kills ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["export-checkpoint", "export-written"])
def test_an_export_killed_midway_leaves_nothing_and_a_rerun_completes(swept, tmp_path, stage):
    target = tmp_path / "exported"
    killed_at(stage, swept, "--run-dir", str(target))
    assert not os.path.lexists(target)  # not even a .lock or a config.json
    assert len(staging_of(target)) == 1  # the dead exporter's staging folder, unlocked
    r = export(swept, "--run-dir", str(target))
    assert r.code == 0, r.err
    assert staging_of(target) == []  # recognised as debris and removed
    check_loads(target)


def test_an_export_killed_after_its_rename_is_whole(swept, tmp_path):
    target = tmp_path / "exported"
    killed_at("export-installed", swept, "--run-dir", str(target))
    assert staging_of(target) == []
    check_loads(target)
    one_line(export(swept, "--run-dir", str(target)), "already holds a run")


def test_a_killed_export_to_a_default_name_is_collected_by_the_next(swept, home):
    runs = Path(os.environ["PIPELINE_RUNS"])
    before = set(os.listdir(runs)) if runs.is_dir() else set()
    killed_at("export-written", swept)
    debris = [n for n in set(os.listdir(runs)) - before if n.startswith(".digits_mlp-trial0-")]
    assert len(debris) == 1 and not [n for n in set(os.listdir(runs)) - before if not n.startswith(".")]
    r = export(swept)
    assert r.code == 0, r.err
    made = Path(r.out.strip())
    assert made.parent == runs and made.name.startswith("digits_mlp-trial0-")
    assert not (runs / debris[0]).exists()
    check_loads(made)


# -- staging folders -----------------------------------------------------------------------------------
def test_only_abandoned_staging_folders_are_collected(tmp_path):
    target = tmp_path / "x"
    live, dead, bare = new_staging(target), new_staging(target), new_staging(target)
    (dead / ".lock").write_text("{}\n")  # its writer is gone: nobody holds the lock
    other = new_staging(tmp_path / "y")
    (other / ".lock").write_text("{}\n")
    (tmp_path / f".x.tmp-{'0' * 12}").symlink_to(other)  # a link with a staging name: never followed
    with folder_lock(live, "run folder"):
        assert collect_abandoned(tmp_path, "x".__eq__) == [dead]
    assert live.is_dir() and bare.is_dir() and other.is_dir() and not dead.exists()
    assert collect_abandoned(tmp_path, "x".__eq__) == [live]  # released now
