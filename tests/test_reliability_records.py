"""The records under faults: atomic small files, metrics parts under kills, concurrent bench appends."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.durable import files, folder_locks, renames
from pipeline.durable.files import write_json, write_parquet
from pipeline.durable.folder_locks import FolderLocked, folder_lock
from pipeline.durable.records import CorruptFile, parquet_files, read_json, read_parquet_files
from pipeline.track import metrics
from pipeline.track.metrics import FANOUT, MEMBERS_SCHEMA, MetricsTable, read_metrics
from tests.conftest import ROOT


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- atomic small files ------------------------------------------------------------------------
def test_a_symlink_planted_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    names = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    planted = tmp_path / f".config.json.{os.getpid()}.aaaaaaaaaaaa.tmp"
    planted.symlink_to(target)
    write_json(tmp_path / "config.json", {"a": 1})
    assert target.read_text() == "precious"
    assert read_json(tmp_path / "config.json") == {"a": 1}
    assert planted.is_symlink()  # skipped, not used; the write took the next name
    assert not list(tmp_path.glob(".config.json.*bbbb*"))


def test_a_symlink_at_the_final_name_is_replaced_not_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (tmp_path / "summary.json").symlink_to(target)
    write_json(tmp_path / "summary.json", {"steps": 1})
    assert target.read_text() == "precious"
    assert not (tmp_path / "summary.json").is_symlink()


def test_disk_full_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    write_json(tmp_path / "summary.json", {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as exc:
        write_json(tmp_path / "summary.json", {"new": True})
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert read_json(tmp_path / "summary.json") == {"old": True}
    assert visible(tmp_path) == ["summary.json"]


def test_a_damaged_json_record_is_one_line_naming_it(tmp_path):
    (tmp_path / "config.json").write_text('{"config": {')
    with pytest.raises(CorruptFile, match=r"config.json: damaged record \(not JSON: "):
        read_json(tmp_path / "config.json")


# -- metrics parts -------------------------------------------------------------------------------
def steps_of(path: Path) -> list[int]:
    table = pq.read_table(path)
    loss = (np.asarray(table.column("split")) == "train") & (np.asarray(table.column("name")) == "loss")
    return sorted(np.asarray(table.column("step"))[loss].tolist())


def test_metrics_flushes_are_parts_and_merge_into_a_few(tmp_path):
    m = MetricsTable(tmp_path / "metrics.parquet")
    for step in range(1, 1001):
        m.add(step, "train", {"loss": 1.0 / step}, 0.5)
        m.flush()
    parts = visible(tmp_path / "metrics.parquet")
    assert len(parts) <= 4 * (FANOUT - 1)  # 1000 flushes, merged log-structured
    assert all(p.startswith("part-") and p.endswith(".parquet") for p in parts)
    assert steps_of(tmp_path / "metrics.parquet") == list(range(1, 1001))
    import pandas

    assert len(pandas.read_parquet(tmp_path / "metrics.parquet")) == 1000
    assert read_metrics(tmp_path / "metrics.parquet").schema.names == ["step", "split", "name", "value", "wall_s"]


@pytest.mark.parametrize("kept", [metrics.KEPT_ROWS, 40], ids=["in-memory", "over-the-limit"])
def test_the_writer_s_table_is_what_its_folder_holds(tmp_path, monkeypatch, kept):
    """A writer keeps the parts it wrote (up to ``KEPT_ROWS`` rows) and reads them from memory: through
    flushes, merges and both truncations (a part they rewrite is read from the disk again) its table
    equals the folder's rows, and after flushes and merges within the limit the disk is not read."""
    monkeypatch.setattr(metrics, "KEPT_ROWS", kept)
    path = tmp_path / "metrics.parquet"
    m = MetricsTable(path, members=True)

    def add(steps: range) -> None:
        for step in steps:
            m.add(np.full(2, step), "train", {"loss": np.array([1.0 / step, 2.0 / step])}, 0.5, trial=np.array([3, 4]))
            m.flush()

    def check(from_memory: bool = False) -> None:
        on_disk = read_parquet_files(parquet_files(path), MEMBERS_SCHEMA)
        if from_memory and kept == metrics.KEPT_ROWS:
            with monkeypatch.context() as patched:
                patched.setattr(metrics, "read_parquet_files", lambda *a: pytest.fail("read from the disk"))
                assert m.table().equals(on_disk)
        else:
            assert m.table().equals(on_disk)

    add(range(1, 2 * FANOUT + 3))  # two merges
    check(from_memory=True)
    m.truncate_members({3: 2 * FANOUT, 4: 5})
    check()
    add(range(2 * FANOUT + 1, 3 * FANOUT))
    m.truncate_after(2 * FANOUT + 4)
    check()
    assert sorted(set(np.asarray(m.table().column("step")).tolist())) == list(range(1, 2 * FANOUT + 5))


def test_truncate_after_drops_rows_once(tmp_path):
    m = MetricsTable(tmp_path / "metrics.parquet")
    for step in range(1, 101):
        m.add(step, "train", {"loss": float(step)}, 0.0)
        if step % 7 == 0:
            m.flush()
    m.flush()
    m.truncate_after(50)
    assert steps_of(tmp_path / "metrics.parquet") == list(range(1, 51))
    again = MetricsTable(tmp_path / "metrics.parquet")  # a resume: rows 51.. written again
    for step in range(51, 121):
        again.add(step, "train", {"loss": float(step)}, 0.0)
        again.flush()
    assert steps_of(tmp_path / "metrics.parquet") == list(range(1, 121))


def test_a_truncation_killed_halfway_never_doubles_a_row(tmp_path, monkeypatch):
    m = MetricsTable(tmp_path / "metrics.parquet")
    for step in range(1, 41):
        m.add(step, "train", {"loss": float(step)}, 0.0)
        m.flush()
    calls = {"n": 0}
    real_unlink = os.unlink

    def dies_on_second(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed between two part removals
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr("pipeline.track.metrics.os.unlink", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        m.truncate_after(10)
    monkeypatch.undo()
    seen = steps_of(tmp_path / "metrics.parquet")
    assert len(seen) == len(set(seen)) and seen[:10] == list(range(1, 11))  # some rows past 10 remain, none twice
    resumed = MetricsTable(tmp_path / "metrics.parquet")
    resumed.truncate_after(10)
    for step in range(11, 21):
        resumed.add(step, "train", {"loss": float(step)}, 0.0)
        resumed.flush()
    assert steps_of(tmp_path / "metrics.parquet") == list(range(1, 21))


def test_a_merge_killed_between_its_renames_is_rolled_back(tmp_path, monkeypatch):
    m = MetricsTable(tmp_path / "metrics.parquet")
    for step in range(1, FANOUT):
        m.add(step, "train", {"loss": float(step)}, 0.0)
        m.flush()
    monkeypatch.setattr(renames, "EXCHANGE", False)  # a file system without RENAME_EXCHANGE
    real_rename = os.rename
    calls = {"n": 0}

    def dies_on_second(a, b):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_rename(a, b)

    monkeypatch.setattr(renames.os, "rename", dies_on_second)
    m.add(FANOUT, "train", {"loss": 0.0}, 0.0)
    with pytest.raises(KeyboardInterrupt):
        m.flush()  # the 8th part triggers a merge, killed with the old folder renamed aside
    monkeypatch.undo()
    assert not (tmp_path / "metrics.parquet").exists()
    MetricsTable(tmp_path / "metrics.parquet")  # the next owner rolls it back
    assert steps_of(tmp_path / "metrics.parquet") == list(range(1, FANOUT + 1))
    assert visible(tmp_path) == ["metrics.parquet"]


def test_a_run_recorded_as_one_file_is_converted(tmp_path):
    legacy = pa.table({"step": [1, 2], "split": ["train"] * 2, "name": ["loss"] * 2, "value": [1.0, 0.5],
                       "wall_s": [0.1, 0.2]})
    pq.write_table(legacy, tmp_path / "metrics.parquet")
    assert read_metrics(tmp_path / "metrics.parquet").num_rows == 2  # readers take the old file too
    m = MetricsTable(tmp_path / "metrics.parquet")
    m.add(3, "train", {"loss": 0.25}, 0.3)
    m.flush()
    assert (tmp_path / "metrics.parquet").is_dir()
    assert steps_of(tmp_path / "metrics.parquet") == [1, 2, 3]


WRITER = """
import sys
from pipeline.track.metrics import MetricsTable
m = MetricsTable(sys.argv[1])
step = 0
while True:
    step += 1
    m.add(step, "train", {"loss": 1.0 / step, "accuracy": 0.5}, 0.1)
    m.flush()
    if step == 1:  # one whole flush on disk before the kill can come, however loaded the machine
        print("ready", flush=True)
"""


@pytest.mark.parametrize("delay", [0.3, 0.55, 0.8, 1.1])
def test_metrics_survive_a_kill_during_a_flush(tmp_path, delay):
    """SIGKILL while flushing (and merging) as fast as it can: the folder reads as one table of whole flushes."""
    path = tmp_path / "metrics.parquet"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen = steps_of(path)
    assert seen == list(range(1, len(seen) + 1)) and len(seen) > 0  # whole flushes, in order, none twice
    table = pq.read_table(path)
    assert table.num_rows == 2 * len(seen)  # both metrics of every flushed step
    resumed = MetricsTable(path)  # the next owner deletes what the kill left
    assert not [p for p in path.iterdir() if p.name.startswith(".")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    resumed.truncate_after(len(seen) // 2)
    assert steps_of(path) == list(range(1, len(seen) // 2 + 1))


# -- concurrent bench appends --------------------------------------------------------------------
APPENDER = """
import sys
from pathlib import Path
from pipeline.bench.results import append
for i in range(int(sys.argv[3])):
    append(Path(sys.argv[1]), [{"run_id": f"{sys.argv[2]}-{i}", "impl": "pipeline", "status": "ok"},
                               {"run_id": f"{sys.argv[2]}-{i}", "impl": "jax_bare", "status": "ok"}])
"""


@pytest.mark.parametrize("legacy", [False, True], ids=["fresh", "from-a-single-file"])
def test_concurrent_bench_appends_lose_no_rows(tmp_path, legacy):
    from pipeline.bench.results import read, to_table

    if legacy:  # a results table written before, as one file: converted once, under a lock
        pq.write_table(to_table([{"run_id": "old", "impl": "pipeline", "status": "ok"}]), tmp_path / "bench.parquet")
    writers, appends = 4, 15
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(tmp_path), f"w{w}", str(appends)], cwd=ROOT)
             for w in range(writers)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    table = pq.read_table(tmp_path / "bench.parquet")
    assert table.num_rows == writers * appends * 2 + legacy
    ids = table.column("run_id").to_pylist()
    assert {f"w{w}-{i}" for w in range(writers) for i in range(appends)} <= set(ids)
    assert read(tmp_path).num_rows == table.num_rows


# -- locks ---------------------------------------------------------------------------------------
def test_the_lock_is_reentrant_here_and_exclusive_elsewhere(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    with folder_lock(folder), folder_lock(folder):
        info = json.loads((folder / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"]
        code = ("import sys\nfrom pipeline.durable.folder_locks import folder_lock, FolderLocked\n"
                "try:\n    with folder_lock(sys.argv[1]): print('got it')\n"
                "except FolderLocked as exc: print(exc)\n")
        probe = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True)
        assert probe.stdout.startswith(f"run folder {folder} is in use by pid {os.getpid()} on host "), probe
    assert folder_locks.lock_holder(folder) is None
    probe = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert probe.stdout.strip() == "got it"
    assert FolderLocked.exit_code == 2


def test_write_parquet_round_trips(tmp_path):
    table = pa.table({"a": [1, 2, 3]})
    write_parquet(table, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
    assert visible(tmp_path) == ["t.parquet"]


def test_a_library_run_unlocks_its_folder_when_its_metrics_writer_goes(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    folder_locks.hold_folder(folder)  # what open_run_dir does for pipeline.fit() and train.run.train()
    writer = MetricsTable(folder / "metrics.parquet")
    assert folder_locks.holds(folder)
    del writer
    assert not folder_locks.holds(folder) and folder_locks.lock_holder(folder) is None
