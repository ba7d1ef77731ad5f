"""The store under concurrency, faults and hostile input, through the command line.

Every case asserts the exit status; an error is exactly one stderr line with no traceback; and
where the store must be left as it was, its tree hash (every path under the root with its kind,
size and content hash) is compared before and after. Writers are killed at named stages with
the test hook ``PIPELINE_TEST_PAUSE_AT=STAGE[:SECONDS]`` (pipeline/data/commit.py), whose
``paused at STAGE`` line on stderr is not counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import DataError, Store, ensure_dataset, import_dataset
from pipeline.data import commit as commits
from tests.conftest import ROOT, Result
from tests.data.conftest import numbered, rewrite

HOST = socket.gethostname()
NO_EXCHANGE = "tests.plugins.no_exchange"  # PIPELINE_TEST_PLUGIN: renames.EXCHANGE = False in the process
AUTO_IMPORT = ("import sys; from pipeline.data import Store, ensure_dataset; "
               "print(ensure_dataset(Store(), 'digits').fingerprint)")


# -- helpers -----------------------------------------------------------------------------------------

def tree(root: Path) -> dict[str, tuple]:
    """Every path below ``root``: ("dir",), ("link", target) or ("file", size, sha256)."""
    found: dict[str, tuple] = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here, name)
            rel, mode = str(path.relative_to(root)), path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def one_line(result: Result, code: int, *fragments: str) -> str:
    """Exit ``code``, one stderr line (the test hook's ``paused at`` aside), no traceback."""
    lines = [line for line in result.err.splitlines() if line.strip() and not line.startswith("paused at ")]
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.err, result.err
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def spawn(*args: str, pause: str | None = None, code: str | None = None, plugin: str | None = None
          ) -> subprocess.Popen:
    """``python -m pipeline ARGS`` (or ``python -c CODE ARGS``) in the background, output captured;
    ``plugin``, a module under tests/plugins/ that the command line imports first (PIPELINE_TEST_PLUGIN)."""
    env = dict(os.environ)
    env.pop("PIPELINE_TEST_PAUSE_AT", None)
    if pause:
        env["PIPELINE_TEST_PAUSE_AT"] = pause
    if plugin:
        env["PIPELINE_TEST_PLUGIN"] = plugin
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "pipeline", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_paused(proc: subprocess.Popen, stage: str, timeout: float = 60) -> None:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 0.1)[0]:
            line = proc.stderr.readline()
            if line.startswith(f"paused at {stage}"):
                return
            if not line:
                break
            seen.append(line)
    proc.kill()
    raise AssertionError(f"never paused at {stage}: {''.join(seen)}{proc.stderr.read()}")


def finish(proc: subprocess.Popen, timeout: float = 120) -> Result:
    code = proc.wait(timeout=timeout)
    return Result(code, proc.stdout.read(), proc.stderr.read())


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def run(*args: str, code: str | None = None, plugin: str | None = None) -> Result:
    return finish(spawn(*args, code=code, plugin=plugin))


@dataclass
class Sources:
    old: str
    new: str
    old_fp: str
    new_fp: str


@pytest.fixture
def src(tmp_path) -> Sources:
    """Two .npz sources of different rows, and the fingerprints of the datasets they give."""
    old, new = numbered(60), numbered(90, start=500)
    np.savez(tmp_path / "old.npz", x=old.x, y=old.y)
    np.savez(tmp_path / "new.npz", x=new.x, y=new.y)
    ref = Store(tmp_path / "reference")
    return Sources(str(tmp_path / "old.npz"), str(tmp_path / "new.npz"),
                   import_dataset(ref, str(tmp_path / "old.npz"), "a").fingerprint,
                   import_dataset(ref, str(tmp_path / "new.npz"), "b").fingerprint)


@pytest.fixture
def data(workdir) -> Path:
    return workdir / "data"


def fingerprint_of(cli, name: str) -> str:
    """``data verify NAME`` succeeds; its fingerprint."""
    result = cli("data", "verify", name)
    assert result.code == 0, result.err
    return result.out.split()[-1]


def hidden(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.name.startswith("."))


# -- two writers at once -------------------------------------------------------------------------------

def test_two_imports_of_one_name_started_together(data, src):
    """Exactly one wins; the other names the winner's pid and host (or, had it started late, finds the dataset)."""
    procs = [spawn("data", "import", source, "--name", "n", pause="locked:1") for source in (src.old, src.new)]
    results = [finish(p) for p in procs]
    assert sorted(r.code for r in results) == [0, 2], results
    winner = procs[[r.code for r in results].index(0)]
    loser = results[[r.code for r in results].index(2)]
    line = one_line(loser, 2)
    assert f"locked by pid {winner.pid} on {HOST}" in line or "dataset 'n' already exists" in line, line
    assert Store(data).names() == ["n"]


def test_a_second_writer_is_told_who_holds_the_lock(cli, data, src):
    holder = spawn("data", "import", src.old, "--name", "a", pause="staging")
    wait_paused(holder, "staging")
    try:
        before = tree(data)
        line = one_line(cli("data", "import", src.new, "--name", "b"), 2,
                        f"the store {data} is locked by pid {holder.pid} on {HOST} (import 'a' since ")
        assert "--wait" in line
        one_line(cli("data", "gc"), 2, f"locked by pid {holder.pid} on {HOST}")
        assert tree(data) == before
    finally:
        kill(holder)


def test_wait_queues_behind_the_holder(data, src):
    first = spawn("data", "import", src.old, "--name", "a", pause="staging:1")
    wait_paused(first, "staging")
    second = spawn("data", "import", src.new, "--name", "b", "--wait")
    gc = spawn("data", "gc", "--wait")
    assert finish(first).code == 0
    assert finish(second).code == 0
    collected = finish(gc)
    assert collected.code == 0 and collected.err == ""
    assert Store(data).names() == ["a", "b"] and hidden(data) == []


def test_two_waiting_imports_of_one_name(data, src):
    """With --wait the second waits, then finds the dataset: one success, one 'already exists'."""
    results = [finish(p) for p in [spawn("data", "import", s, "--name", "n", "--wait", pause="locked:0.5")
                                   for s in (src.old, src.new)]]
    assert sorted(r.code for r in results) == [0, 2]
    one_line(next(r for r in results if r.code == 2), 2, "dataset 'n' already exists")


@pytest.mark.parametrize("wait", [False, True])
def test_two_overwrites_at_once(cli, data, src, wait):
    """Every import that succeeds is whole; the dataset is one of them (or, if none ran, the old one)."""
    assert cli("data", "import", src.old, "--name", "n").code == 0
    flags = ["--wait"] if wait else []
    procs = [spawn("data", "import", s, "--name", "n", "--overwrite", *flags, pause="written:0.5")
             for s in (src.old, src.new)]
    results = [finish(p) for p in procs]
    assert 0 in [r.code for r in results]
    for proc, result in zip(procs, results):
        if result.code:
            assert not wait
            one_line(result, 2, f"locked by pid {procs[1 - procs.index(proc)].pid} on {HOST}")
    assert fingerprint_of(cli, "n") in (src.old_fp, src.new_fp)
    if wait:
        assert [r.code for r in results] == [0, 0]
    assert hidden(data) == []


def test_two_auto_imports_of_a_builtin(data):
    """``train data=digits`` on a fresh store, twice at once: both get the dataset, one imports it."""
    procs = [spawn(code=AUTO_IMPORT, pause="written:0.5") for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [r.code for r in results] == [0, 0], [r.err for r in results]
    assert results[0].out == results[1].out and results[0].out.startswith("sha256:")
    assert sum("paused at written" in r.err for r in results) == 1  # only the importer wrote
    assert Store(data).names() == ["digits"] and hidden(data) == []


@pytest.mark.slow
def test_two_trainings_on_a_fresh_store_share_one_auto_import(data):
    """The same through ``pipeline train digits_mlp data=digits``, as a user starts two runs at once."""
    args = ["train", "digits_mlp", "data=digits", "steps=2", "eval_every=2", "--no-progress"]
    results = [finish(p, timeout=300) for p in [spawn(*args, pause="written:0.5") for _ in range(2)]]
    assert [r.code for r in results] == [0, 0], [r.err[-2000:] for r in results]
    assert sum("paused at written" in r.err for r in results) == 1
    assert Store(data).names() == ["digits"] and hidden(data) == []


# -- SIGKILL at every stage ----------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["locked", "staging", "written", "installed"])
def test_sigkill_during_an_import(cli, data, src, stage):
    assert cli("data", "import", src.old, "--name", "keep").code == 0
    proc = spawn("data", "import", src.new, "--name", "n", pause=stage)
    wait_paused(proc, stage)
    kill(proc)
    assert cli("data", "list").code == 0
    assert fingerprint_of(cli, "keep") == src.old_fp
    if stage == "installed":
        assert fingerprint_of(cli, "n") == src.new_fp
    else:
        one_line(cli("data", "verify", "n"), 2, "no dataset 'n'")
    gc = cli("data", "gc")
    assert gc.code == 0
    if stage in ("staging", "written"):
        assert "(staging of an interrupted import" in gc.out
    assert hidden(data) == []  # staging and the dead holder's .lock are gone


@pytest.mark.parametrize("stage, survivor", [("locked", "old"), ("staging", "old"), ("written", "old"),
                                             ("swapped", "new"), ("installed", "new")])
def test_sigkill_during_an_overwrite(cli, data, src, stage, survivor):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    proc = spawn("data", "import", src.new, "--name", "n", "--overwrite", pause=stage)
    wait_paused(proc, stage)
    kill(proc)
    assert "n" in cli("data", "list").out
    assert fingerprint_of(cli, "n") == (src.old_fp if survivor == "old" else src.new_fp)
    assert cli("data", "import", src.old, "--name", "other").code == 0  # the next write collects the debris
    assert hidden(data) == []


@pytest.mark.parametrize("stage, survivor", [("moved-aside", "old"), ("swapped", "new")])
def test_sigkill_during_an_overwrite_without_exchange(cli, data, src, stage, survivor):
    """Where folders cannot be exchanged: old aside, new in place; the recovery rule puts the old one back."""
    assert cli("data", "import", src.old, "--name", "n").code == 0
    proc = spawn("data", "import", src.new, "--name", "n", "--overwrite", pause=stage, plugin=NO_EXCHANGE)
    wait_paused(proc, stage)
    kill(proc)
    olds = [n for n in hidden(data) if n.startswith(".n.old-")]
    assert len(olds) == 1 and (data / "n").exists() == (stage != "moved-aside")
    assert fingerprint_of(cli, "n") == (src.old_fp if survivor == "old" else src.new_fp)  # a reader recovers
    assert "n" in cli("data", "list").out
    gc = cli("data", "gc")
    assert gc.code == 0 and hidden(data) == []


def test_a_reader_in_the_gap_between_the_two_renames_waits_for_the_new_dataset(cli, data, src):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    proc = spawn("data", "import", src.new, "--name", "n", "--overwrite", pause="moved-aside:1", plugin=NO_EXCHANGE)
    wait_paused(proc, "moved-aside")
    assert not (data / "n").exists()
    assert fingerprint_of(cli, "n") == src.new_fp  # the writer holds the lock: the reader waits for its rename
    assert finish(proc).code == 0 and hidden(data) == []


def test_a_completed_overwrite_without_exchange(cli, data, src):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    result = run("data", "import", src.new, "--name", "n", "--overwrite", plugin=NO_EXCHANGE)
    assert result.code == 0, result.err
    assert fingerprint_of(cli, "n") == src.new_fp and hidden(data) == []


def test_the_next_write_applies_the_recovery_rule(cli, data, src):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    os.rename(data / "n", data / ".n.old-0123456789ab")  # as a kill between the two renames leaves it
    (data / ".m.tmp-0123456789ab" / "train").mkdir(parents=True)  # a killed import's staging
    (data / ".m.tmp-0123456789ab" / "train" / "part-00000.parquet").write_bytes(b"half")
    assert cli("data", "import", src.new, "--name", "m").code == 0
    assert hidden(data) == [] and Store(data).names() == ["m", "n"]
    assert fingerprint_of(cli, "n") == src.old_fp


def test_gc_reports_what_it_did(cli, data, src):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    assert cli("data", "gc").out.strip() == f"nothing to collect in {data}"
    os.rename(data / "n", data / ".n.old-0123456789ab")
    (data / ".x.tmp-0123456789ab").mkdir()
    (data / ".x.tmp-0123456789ab" / "part").write_bytes(b"12345")
    result = cli("data", "gc")
    assert result.code == 0 and result.err == ""
    assert result.out.splitlines() == [
        f"restored 'n' from {data}/.n.old-0123456789ab (an --overwrite was interrupted)",
        f"removed {data}/.x.tmp-0123456789ab (staging of an interrupted import, 5 bytes)",
    ]
    assert hidden(data) == [] and fingerprint_of(cli, "n") == src.old_fp


# -- signals -------------------------------------------------------------------------------------------

@pytest.mark.contract  # SIGTERM to a real process: exit 143 and one line
@pytest.mark.parametrize("overwrite", [False, True])
def test_sigterm_during_an_import_removes_its_staging(cli, data, src, overwrite):
    assert cli("data", "import", src.old, "--name", "n" if overwrite else "keep").code == 0
    before = tree(data)
    proc = spawn("data", "import", src.new, "--name", "n", *(["--overwrite"] if overwrite else []), pause="staging")
    wait_paused(proc, "staging")
    proc.send_signal(signal.SIGTERM)
    one_line(finish(proc), 143, "terminated (SIGTERM): the import of 'n' stopped")
    assert tree(data) == before


@pytest.mark.contract  # Ctrl-C (SIGINT) to a real process: exit 130 and one line
def test_ctrl_c_during_an_import_removes_its_staging(cli, data, src):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    before = tree(data)
    proc = spawn("data", "import", src.new, "--name", "n", "--overwrite", pause="written")
    wait_paused(proc, "written")
    proc.send_signal(signal.SIGINT)
    one_line(finish(proc), 130, "interrupted")
    assert tree(data) == before


# -- disk full, read-only, not a folder ------------------------------------------------------------------

@pytest.fixture
def big(tmp_path) -> str:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", x=rng.normal(size=(20_000, 8)).astype(np.float32), y=np.arange(20_000) % 3)
    return str(tmp_path / "big.npz")


@pytest.mark.parametrize("overwrite", [False, True])
def test_file_size_limit_leaves_the_store_unchanged(cli, data, src, big, overwrite):
    """``ulimit -f``: writes fail with EFBIG (Python ignores SIGXFSZ) part-way through the import."""
    assert cli("data", "import", src.old, "--name", "n").code == 0
    before = tree(data)
    name = ["n", "--overwrite"] if overwrite else ["m"]
    proc = subprocess.run(["bash", "-c", 'ulimit -f 64; exec "$0" -m pipeline "$@"', sys.executable,
                           "data", "import", big, "--name", *name],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_line(Result(proc.returncode, proc.stdout, proc.stderr), 2, f"{data}: cannot write dataset",
             "File too large (nothing was stored)")
    assert tree(data) == before


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except OSError:  # no mount command
        return False


@pytest.fixture
def tiny_fs(tmp_path):
    """A 192 KiB tmpfs (needs root; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)):
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_leaves_the_store_unchanged(cli, tiny_fs, src, big):
    store = tiny_fs / "data"
    assert cli("data", "import", src.old, "--name", "n", "--store", str(store)).code == 0
    before = tree(store)
    for name in (["m"], ["n", "--overwrite"]):
        one_line(cli("data", "import", big, "--name", *name, "--store", str(store)), 2,
                 "No space left on device (nothing was stored)")
        assert tree(store) == before


@pytest.fixture
def read_only(cli, data, src):
    """A store with dataset 'n', made read-only: a read-only bind mount as root, else permissions."""
    assert cli("data", "import", src.old, "--name", "n").code == 0
    if os.geteuid() == 0:
        if not _mount("--bind", str(data), str(data)):
            pytest.skip("cannot bind-mount here")
        try:
            if not _mount("-o", "remount,ro,bind", str(data)):
                pytest.skip("cannot remount read-only here")
            yield data
        finally:
            subprocess.run(["umount", str(data)], check=True)
    else:
        paths = [data, *data.rglob("*")]
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        yield data
        for p in paths:
            p.chmod(p.stat().st_mode | 0o200)


@pytest.mark.parametrize("args", [["data", "import", "OLD", "--name", "m"],
                                  ["data", "import", "OLD", "--name", "n", "--overwrite"],
                                  ["data", "gc"]])
def test_a_read_only_store_refuses_writes_in_one_line(cli, read_only, src, args):
    before = tree(read_only)
    args = [src.old if a == "OLD" else a for a in args]
    one_line(cli(*args), 2, f"{read_only}/.lock: cannot lock the store:")
    assert tree(read_only) == before
    assert cli("data", "list").code == 0 and cli("data", "show", "n").code == 0
    assert fingerprint_of(cli, "n") == src.old_fp


@pytest.mark.parametrize("args", [["data", "import", "OLD", "--name", "n"], ["data", "list"], ["data", "show", "n"],
                                  ["data", "verify", "n"], ["data", "gc"]])
def test_a_store_that_is_a_file(cli, tmp_path, src, args):
    store = tmp_path / "store-file"
    store.write_bytes(b"not a folder")
    args = [src.old if a == "OLD" else a for a in args]
    one_line(cli(*args, "--store", str(store)), 2, f"{store}: the store is not a folder")
    assert store.read_bytes() == b"not a folder"


# -- names ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["show", "verify", "import"])
@pytest.mark.parametrize("name", ["../x", "..", ".hidden", "a/b", "/etc", "", "x" * 201, "y" * 300])
def test_bad_names_are_refused_before_any_path_is_read(cli, data, src, tmp_path, command, name):
    assert cli("data", "import", src.old, "--name", "x").code == 0
    (tmp_path / "outside" / "train").mkdir(parents=True)  # what ../x would reach from the store
    before = tree(data)
    args = ["data", "import", src.old, "--name", name] if command == "import" else ["data", command, name]
    one_line(cli(*args), 2, "bad dataset name")
    assert tree(data) == before


def test_names_are_checked_by_the_library_readers(store):
    for call in (lambda: store.info("../x"), lambda: store.read("../x", "train"), lambda: ensure_dataset(store, "../x"),
                 lambda: store.exists("a/b")):
        with pytest.raises(DataError, match="bad dataset name"):
            call()


# -- hostile sources and arguments ---------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--row-group-mb", "nan"), ("--row-group-mb", "0"), ("--row-group-mb", "-1"),
                                         ("--row-group-mb", "inf"), ("--file-mb", "0"), ("--block-mb", "nan"),
                                         ("--seed", "-1"), ("--test-fraction", "nan"), ("--test-fraction", "inf")])
def test_bad_numbers(cli, data, src, flag, value):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    before = tree(data)
    one_line(cli("data", "import", src.new, "--name", "m", f"{flag}={value}"), 2, flag, value)
    assert tree(data) == before


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.float32(1.0), "y": np.arange(3)}, "array 'x' is 0-d"),
    ({"x": np.zeros((3, 2), np.float32), "y": np.int64(1)}, "array 'y' is 0-d"),
    ({"x": np.zeros((10, 0), np.float32), "y": np.arange(10) % 2}, "array 'x' has shape (10, 0): rows of zero width"),
    ({"x": np.zeros((10, 2), np.float32), "y": np.arange(10) % 2, "x_test": np.zeros((4, 2, 0), np.float32),
      "y_test": np.arange(4) % 2}, "array 'x_test' has shape (4, 2, 0)"),
])
def test_degenerate_npz_arrays(cli, data, src, tmp_path, arrays, message):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    before = tree(data)
    np.savez(tmp_path / "bad.npz", **arrays)
    one_line(cli("data", "import", str(tmp_path / "bad.npz"), "--name", "m"), 2, "bad.npz: ", message)
    assert tree(data) == before


def test_duplicate_column_names_in_a_source(cli, data, src, tmp_path):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    before = tree(data)
    (tmp_path / "dup.csv").write_text("a,b,a,label\n1,2,3,0\n4,5,6,1\n7,8,9,0\n")
    one_line(cli("data", "import", str(tmp_path / "dup.csv"), "--name", "m", "--target", "label"), 2,
             "dup.csv: column 'a' appears more than once")
    assert tree(data) == before


def _meta(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"pipeline"])


CRAFTED = {
    "not JSON": lambda m: b"{not json",
    "not UTF-8": lambda m: b"\xff\xfe{}",
    "a list": lambda m: b"[1, 2]",
    "nested too deeply": lambda m: b"[" * 100_000 + b"]" * 100_000,
    "rows a list": lambda m: {**m, "rows": [1, 2]},
    "shape a string": lambda m: {**m, "feature_shape": "abc"},
    "dtype object": lambda m: {**m, "feature_dtype": "object"},
    "task unknown": lambda m: {**m, "task": "poetry"},
    "classes a string": lambda m: {**m, "num_classes": "3"},
    "one column name": lambda m: {**m, "label_column": "x"},
    "no name": lambda m: {k: v for k, v in m.items() if k != "name"},
}


@pytest.mark.parametrize("command", ["show", "verify"])
@pytest.mark.parametrize("craft", sorted(CRAFTED))
def test_crafted_footer_metadata(cli, data, src, command, craft):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    [first] = Store(data).files("n", "train")
    crafted = CRAFTED[craft](_meta(first))
    rewrite(first, metadata={b"pipeline": crafted if isinstance(crafted, bytes) else json.dumps(crafted).encode()})
    before = tree(data)
    one_line(cli("data", command, "n"), 2, "part-00000.parquet: unreadable 'pipeline' metadata")
    assert tree(data) == before
    with pytest.raises(DataError, match="unreadable 'pipeline' metadata"):
        Store(data).read("n", "train")  # what `train data=n` reads
    listed = cli("data", "list")
    assert listed.code == 0 and "unreadable" in listed.out


def test_page_checksums_catch_a_flipped_bit(cli, data, src):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    [first] = Store(data).files("n", "train")
    column = pq.ParquetFile(first).metadata.row_group(0).column(0)
    raw = bytearray(Path(first).read_bytes())
    raw[column.data_page_offset + column.total_compressed_size - 20] ^= 0x01
    Path(first).write_bytes(bytes(raw))
    assert pq.read_table(first).num_rows == 48  # without checksums the damage reads as data
    one_line(cli("data", "verify", "n"), 2, "part-00000.parquet: cannot read row group 0", "CRC checksum")
    with pytest.raises(DataError, match="part-00000.parquet: .*CRC checksum"):
        Store(data).read("n", "train")


# -- symbolic links planted where the store writes -------------------------------------------------------

@pytest.fixture
def victim(tmp_path, src) -> Path:
    """A folder outside the store holding a dataset and a file, that no store operation may touch."""
    import_dataset(Store(tmp_path / "victim"), src.new, "v")
    (tmp_path / "victim" / "v" / "precious.txt").write_text("keep me")
    return tmp_path / "victim"


def test_a_symlink_at_the_lock_file(cli, data, src, victim):
    assert cli("data", "import", src.old, "--name", "n").code == 0
    (data / ".lock").symlink_to(victim / "v" / "precious.txt")
    before, kept = tree(data), tree(victim)
    for args in (["data", "import", src.new, "--name", "m"], ["data", "gc"]):
        one_line(cli(*args), 2, f"{data}/.lock: is a symbolic link, not the store's lock file")
    assert tree(data) == before and tree(victim) == kept
    assert (victim / "v" / "precious.txt").read_text() == "keep me"
    assert cli("data", "list").code == 0 and fingerprint_of(cli, "n") == src.old_fp  # readers take no lock


def test_a_symlinked_dataset_is_replaced_not_followed(cli, data, src, victim):
    data.mkdir()
    (data / "n").symlink_to(victim / "v")
    kept = tree(victim)
    assert cli("data", "import", src.old, "--name", "n", "--overwrite").code == 0
    assert not (data / "n").is_symlink() and fingerprint_of(cli, "n") == src.old_fp
    assert tree(victim) == kept and hidden(data) == []


def test_symlinks_with_staging_and_old_names_are_left_alone(cli, data, src, victim):
    assert cli("data", "import", src.old, "--name", "keep").code == 0
    (data / ".v.tmp-0123456789ab").symlink_to(victim / "v")
    (data / ".w.old-0123456789ab").symlink_to(victim / "v")
    kept = tree(victim)
    assert cli("data", "list").code == 0
    assert cli("data", "import", src.new, "--name", "m").code == 0
    assert cli("data", "gc").code == 0
    assert not (data / "w").exists()  # an "old" link is never restored as a dataset
    assert tree(victim) == kept and hidden(data) == [".v.tmp-0123456789ab", ".w.old-0123456789ab"]


def test_leftover_names_that_are_no_dataset_names_are_left_alone(cli, data, src):
    assert cli("data", "import", src.old, "--name", "keep").code == 0
    for odd in (".a b.old-0123456789ab", "..old-0123456789ab", ".x.tmp-0123456789ab.bak"):
        (data / odd).mkdir()
    before = tree(data)
    assert cli("data", "list").code == 0 and cli("data", "gc").out.startswith("nothing to collect")
    assert cli("data", "import", src.new, "--name", "m").code == 0
    assert {k: v for k, v in tree(data).items() if not k.startswith("m")} == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_nothing_is_merged_into_a_folder_that_is_not_a_dataset(cli, data, src, overwrite):
    (data / "n").mkdir(parents=True)
    (data / "n" / "notes.txt").write_text("mine")
    before = tree(data)
    result = cli("data", "import", src.old, "--name", "n", *(["--overwrite"] if overwrite else []))
    one_line(result, 2, f"{data}/n: exists but is not a dataset")
    assert tree(data) == before


# -- output --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["data", "show", "n"], ["data", "list"]])
def test_a_closed_stdout_is_not_an_error(cli, src, args):
    """``pipeline data show n | head``: the reader leaves early; status 0 and no BrokenPipeError traceback."""
    assert cli("data", "import", src.old, "--name", "n").code == 0
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# -- commits are durable ---------------------------------------------------------------------------------

def test_commits_fsync_files_and_folders(store, src, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    import_dataset(store, src.old, "n")
    if synced and isinstance(synced[0], str):
        names = {Path(p).name for p in synced}
        assert {"part-00000.parquet", "train", "test", Path(store.base).name} <= names
    assert len(synced) >= 6  # two files, two split folders, the staging folder, the store root


def test_staging_folders_are_made_exclusively(store, src, monkeypatch):
    """A staging name that exists already (any kind of entry) is an error, never reused."""
    monkeypatch.setattr(commits, "token", lambda: "0123456789ab")
    Path(store.base).mkdir()
    (Path(store.base) / ".n.tmp-0123456789ab").symlink_to("/nonexistent")
    with pytest.raises(DataError, match=r"\.n\.tmp-0123456789ab: cannot write dataset 'n': File exists"):
        import_dataset(store, src.old, "n")
