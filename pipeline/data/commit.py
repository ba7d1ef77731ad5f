"""Installing a dataset: fsync, one atomic rename that refuses an existing target, swap-then-delete,
the recovery rule, and collection of what interrupted writers left behind.

Folder names in the store root (hidden names are never datasets):

* ``.NAME.tmp-ID``  staging of an import in progress, or debris of one that was killed;
* ``.NAME.old-ID``  a dataset being replaced by ``--overwrite`` (only where the filesystem cannot
  exchange two folders atomically).

A new dataset: the staging folder is renamed to ``NAME`` with ``renameat2(RENAME_NOREPLACE)``
(Linux; elsewhere ``rename``, which refuses a non-empty folder, after a check under the lock).
An overwrite on Linux exchanges the staging folder and ``NAME`` in one ``renameat2(RENAME_EXCHANGE)``:
``NAME`` is never missing, and the replaced dataset, now at the staging name, is deleted. Where
that is unsupported: ``NAME`` -> ``.NAME.old-ID``, staging -> ``NAME``, delete the old folder.
The renames and fsyncs themselves are ``pipeline.durable``'s (``renames.EXCHANGE = False`` in a
test forces the move-aside path).
**Recovery rule:** an ``.NAME.old-*`` folder with no ``NAME`` beside it is renamed back to
``NAME`` (by the next write, by ``data gc``, and by a reader that finds the store unlocked);
one with ``NAME`` beside it is deleted. Every staging folder belongs to the writer holding the
store lock, so one found by the holder (that is not its own) is debris and is deleted.

``PIPELINE_TEST_PAUSE_AT=STAGE[:SECONDS]`` makes a write sleep at a named stage (default 600 s)
after printing ``paused at STAGE`` to stderr, so tests can kill it there. Tests only. The
stages, in order: ``locked``, ``staging``, ``written``, ``moved-aside``, ``swapped``, ``installed``.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.data import fs as fsx
from pipeline.data.names import is_dataset_name
from pipeline.data.validate import DataError
from pipeline.durable.files import fsync_path, fsync_tree, is_real_dir, remove_path
from pipeline.durable.renames import exchange, rename_noreplace
from pipeline.signals import deferred_interrupts

STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{12}$")
OLD = re.compile(r"^\.(?P<name>.+)\.old-[0-9a-f]{12}$")

# Staging folders of writers alive in this process: never collected, whoever holds the lock.
LIVE: set[str] = set()


def pause_at(stage: str) -> None:
    """Tests only: sleep at ``stage`` when ``PIPELINE_TEST_PAUSE_AT`` names it."""
    wanted = os.environ.get("PIPELINE_TEST_PAUSE_AT", "")
    name, _, seconds = wanted.partition(":")
    if name == stage:
        print(f"paused at {stage}", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 600))


def token() -> str:
    return uuid.uuid4().hex[:12]


def remove_local(path: str) -> None:
    """Delete a dataset, a staging folder or debris at ``path`` (never following a link); OSError if it cannot."""
    remove_path(path, ignore_errors=False)


# -- install ---------------------------------------------------------------------------------------

def install(store, staging: str, name: str, overwrite: bool) -> None:
    """Make the finished ``staging`` folder the dataset ``name`` (the caller holds the store lock)."""
    if store.is_local:
        _install_local(store, staging, name, overwrite)
    else:
        _install_remote(store, staging, name, overwrite)


def _refuse(store, name: str) -> None:
    raise DataError(f"dataset '{name}' already exists in {store.root} (use --overwrite)")


def _check_target(store, name: str, present: bool, overwrite: bool) -> None:
    if present and not store.exists(name):
        raise DataError(f"{store.path(name)}: exists but is not a dataset (no train/part-00000.parquet); "
                        "move it away or remove it")
    if present and not overwrite:
        _refuse(store, name)


def _install_local(store, staging: str, name: str, overwrite: bool) -> None:
    fsync_tree(staging)
    _check_target(store, name, os.path.lexists(store.path(name)), overwrite)
    pause_at("written")
    with deferred_interrupts():  # Ctrl-C and SIGTERM wait for the renames
        _rename_into_place(store, staging, name)


def _rename_into_place(store, staging: str, name: str) -> None:
    root, target = store.base, store.path(name)
    present = os.path.lexists(target)
    if not present:
        try:
            rename_noreplace(staging, target)
        except FileExistsError:
            _refuse(store, name)
        fsync_path(root, directory=True)
        pause_at("installed")
        return
    if exchange(staging, target):  # the new dataset at NAME, the old one at the staging name
        fsync_path(root, directory=True)
        pause_at("swapped")
        _remove_quietly(staging)
        pause_at("installed")
        return
    old = fsx.join(root, f".{name}.old-{token()}")
    os.rename(target, old)
    fsync_path(root, directory=True)
    pause_at("moved-aside")
    try:
        rename_noreplace(staging, target)
    except BaseException:
        if not os.path.lexists(target):
            os.rename(old, target)  # put the old one back; if this fails too, the recovery rule will
        raise
    fsync_path(root, directory=True)
    pause_at("swapped")
    _remove_quietly(old)
    pause_at("installed")


def _remove_quietly(path: str) -> None:
    """Delete a replaced dataset; the new one is in place already, so a failure only leaves debris."""
    try:
        remove_local(path)
    except OSError:
        pass


def _install_remote(store, staging: str, name: str, overwrite: bool) -> None:
    """Object stores rename nothing atomically: move, with the first train file last (store.py)."""
    fs, target = store.fs, store.path(name)
    present = fsx.kind(fs, target) != pafs.FileType.NotFound
    _check_target(store, name, present, overwrite)
    if not present:
        move_tree(fs, staging, target)
        return
    old = fsx.join(store.base, f".{name}.old-{token()}")
    move_tree(fs, target, old)
    move_tree(fs, staging, target)
    fsx.remove_tree(fs, old)


def move_tree(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Rename a folder; where the filesystem cannot (object stores), move file by file.

    File by file, the first train file goes last, so the dataset only exists once whole. The
    target must not exist: files are never merged into another folder.
    """
    if fsx.kind(fs, target) != pafs.FileType.NotFound:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    try:
        fs.move(source, target)
        return
    except (OSError, pa.ArrowNotImplementedError):
        pass
    files = fsx.files_under(fs, source, ("",))
    first = fsx.join(source, "train", "part-00000.parquet")
    for path in sorted(files, key=lambda p: p == first):
        dest = fsx.join(target, path[len(source.rstrip("/")) + 1:])
        fs.create_dir(dest.rsplit("/", 1)[0])
        fs.move(path, dest)
    fsx.remove_tree(fs, source)


# -- recovery and collection ---------------------------------------------------------------------

def leftovers(store) -> list[tuple[str, str, str]]:
    """(kind, name, path) of every staging and old folder in the store root, sorted by path."""
    found = []
    for info in fsx.children(store.fs, store.base):
        base = fsx.basename(info.path)
        for kind, pattern in (("staging", STAGING), ("old", OLD)):
            match = pattern.match(base)
            if match and is_dataset_name(match.group("name")):
                found.append((kind, match.group("name"), info.path))
    return found


def recover(store) -> list[str]:
    """Apply the recovery rule and delete debris; what was done, one phrase each.

    The caller holds the store lock (or, on stores without one, knows no writer is running).
    Symbolic links with these names are skipped: nothing this code made is a link.
    """
    done = []
    for kind, name, path in leftovers(store):
        if path in LIVE or (store.is_local and not is_real_dir(path)):
            continue
        if kind == "old" and not store.exists(name):
            target = store.path(name)
            if store.is_local:
                if os.path.lexists(target):
                    continue  # something else is there: leave both to the user
                rename_noreplace(path, target)
                fsync_path(store.base, directory=True)
            else:
                fsx.remove_tree(store.fs, target)
                move_tree(store.fs, path, target)
            done.append(f"restored '{name}' from {path} (an --overwrite was interrupted)")
            continue
        size = _size(store, path)
        if store.is_local:
            remove_local(path)
        else:
            fsx.remove_tree(store.fs, path)
        what = "staging of an interrupted import" if kind == "staging" else "a replaced dataset"
        done.append(f"removed {path} ({what}, {size:,} bytes)")
    return done


def _size(store, path: str) -> int:
    try:
        return sum(fsx.file_size(store.fs, p) for p in fsx.files_under(store.fs, path, ("",)))
    except (OSError, pa.ArrowException):
        return 0
