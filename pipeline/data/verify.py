"""``pipeline data verify NAME``: every file's schema and metadata, every value, the fingerprint."""

from __future__ import annotations

from pipeline.data.dataset import FORMAT_VERSION
from pipeline.data.fingerprint import Fingerprint
from pipeline.data.rowgroups import SplitIndex
from pipeline.data.store import DatasetReplaced
from pipeline.data.validate import DataError


def verify_dataset(store, name: str) -> dict:
    """Re-read the whole dataset, streaming; raise DataError at the first problem.

    Returns what was checked: files, rows per split, bytes and the recomputed fingerprint.
    A dataset replaced while it is verified (``--overwrite``) is verified again, up to three times.
    """
    for attempt in range(3):
        identity = store.identity(name)
        try:
            report = _verify(store, name)
        except DatasetReplaced:
            if attempt == 2:
                raise
            continue
        except DataError:
            if attempt < 2 and store.identity(name) != identity:
                continue
            raise
        if store.identity(name) == identity:
            return report
    raise DatasetReplaced(f"dataset '{name}' in {store.root} was replaced three times while it was verified")


def _verify(store, name: str) -> dict:
    info = store.info(name)
    where = store.path(name)
    if info.format_version < FORMAT_VERSION:
        raise DataError(f"{where}: format version {info.format_version} predates the streaming fingerprint "
                        f"(version {FORMAT_VERSION}); re-import the dataset to verify it")
    on_disk = set(store.splits(name))
    missing = [s for s in info.rows if s not in on_disk]
    if missing:
        raise DataError(f"{where}: the metadata lists split '{missing[0]}' but there is no such folder")
    extra = sorted(on_disk - set(info.rows))
    if extra:
        raise DataError(f"{store.path(name, extra[0])}: a split folder the metadata does not list")
    digest = Fingerprint()
    files = 0
    for split in sorted(info.rows):
        index = SplitIndex.open(store, name, split)
        files += len(index.paths)
        for group in index.groups:
            x, y = index.read(group)
            digest.update(split, x, y)
    found = digest.hexdigest()
    if found != info.fingerprint:
        raise DataError(f"{where}: content fingerprint {found} differs from the recorded {info.fingerprint} "
                        "(the data changed after import)")
    return {"name": name, "files": files, "rows": dict(info.rows), "bytes": store.size_bytes(name),
            "fingerprint": found}
