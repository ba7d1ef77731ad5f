"""The store lock (lock.py) and readers that meet a dataset being replaced, in one process."""

from __future__ import annotations

import json
import os
import socket
import threading

import numpy as np
import pytest

from pipeline.data import DataError, Store, import_dataset
from pipeline.data.lock import StoreLock, StoreLocked
from pipeline.data.rowgroups import SplitIndex
from pipeline.data.store import DatasetReplaced
from pipeline.durable.locks import LOCK_FILE
from tests.data.conftest import numbered, write_numbered


@pytest.fixture
def root(tmp_path) -> str:
    path = tmp_path / "store"
    path.mkdir()
    return str(path)


def test_the_lock_file_names_its_holder_and_goes_away(root):
    with StoreLock(root, what="import 'x'"):
        record = json.loads(open(os.path.join(root, LOCK_FILE)).read())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["what"] == "import 'x'" and record["since"].endswith("+00:00")
    assert os.listdir(root) == []


def test_the_lock_is_reentrant_in_its_thread_and_exclusive_across_threads(root):
    outer = StoreLock(root)
    with outer:
        with StoreLock(root) as inner:
            assert not inner.acquired_first
        assert os.path.exists(os.path.join(root, LOCK_FILE))  # still held by the outer one
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_try(root)))
        thread.start()
        thread.join()
        assert "locked by another thread of this process" in errors[0]
    assert outer.acquired_first and _try(root) == ""


def _try(root: str) -> str:
    try:
        with StoreLock(root):
            return ""
    except StoreLocked as exc:
        return str(exc)


def test_a_waiting_thread_gets_the_lock_when_it_is_released(root):
    order = []
    first = StoreLock(root)
    first.acquire()

    def wait():
        with StoreLock(root, wait=True):
            order.append("second")

    thread = threading.Thread(target=wait)
    thread.start()
    order.append("first")
    first.release()
    thread.join(timeout=30)
    assert order == ["first", "second"]


def test_a_dead_holders_file_is_taken_over(root):
    with open(os.path.join(root, LOCK_FILE), "w") as handle:
        handle.write('{"pid": 1, "host": "gone", "what": "import \'x\'", "since": "then"}\n')
    with StoreLock(root):
        assert json.loads(open(os.path.join(root, LOCK_FILE)).read())["pid"] == os.getpid()
    assert os.listdir(root) == []


def test_a_fifo_at_the_lock_path_is_refused(root):
    os.mkfifo(os.path.join(root, LOCK_FILE))
    with pytest.raises(DataError, match=r"\.lock: not a regular file"):
        StoreLock(root).acquire()


def test_an_index_opened_before_an_overwrite_refuses_to_read_after_it(store, tmp_path):
    write_numbered(store, "n")
    index = SplitIndex.open(store, "n", "train")
    other = numbered(50, start=7)
    np.savez(tmp_path / "other.npz", x=other.x, y=other.y)
    import_dataset(store, str(tmp_path / "other.npz"), "n", overwrite=True)
    with pytest.raises(DatasetReplaced, match="dataset 'n' in .* was replaced while it was being read"):
        index.read(index.groups[0])
    assert len(store.read("n", "train")) == 40  # a fresh read sees the new dataset whole


def test_a_whole_read_retries_when_the_dataset_is_replaced_under_it(store, tmp_path, monkeypatch):
    write_numbered(store, "n")
    other = numbered(50, start=7)
    np.savez(tmp_path / "other.npz", x=other.x, y=other.y)
    real_open, calls = SplitIndex.open.__func__, []

    def open_then_replace(cls, store_, name, split):
        index = real_open(cls, store_, name, split)
        if not calls:
            calls.append(1)
            import_dataset(Store(store.root), str(tmp_path / "other.npz"), "n", overwrite=True)
        return index

    monkeypatch.setattr(SplitIndex, "open", classmethod(open_then_replace))
    split = store.read("n", "train")
    np.testing.assert_array_equal(split.x, store.read("n", "train").x)
    assert len(split) == 40 and calls == [1]


def test_signals_wait_for_the_end_of_a_commit():
    import signal

    from pipeline.signals import Terminated, deferred_interrupts, sigterm_as_interrupt

    steps = []
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            with deferred_interrupts():
                signal.raise_signal(signal.SIGTERM)
                steps.append("renamed")  # still runs: the signal waits for the block's end
            steps.append("after")  # never runs: the signal is delivered on leaving the block
    assert steps == ["renamed"]
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            steps.append("again")
    assert steps == ["renamed", "again"]
