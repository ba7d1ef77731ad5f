"""A source's own splits, read from its file names the way Hugging Face lays out datasets.

Below a folder (or a glob's fixed folder) a file belongs to a split when a folder on its way
is named like one (``train/``, ``test/``, ``validation/``) or its own name starts with one
followed by ``-``, ``_`` or ``.`` (``train-00000-of-00001.parquet``, ``data/test.csv``).
``valid`` and ``val`` are stored as ``validation``. A source whose files name no split is one
pool of training rows, split at random as before.
"""

from __future__ import annotations

import re

from pipeline.data.validate import DataError

ORDER = ("train", "test", "validation")  # stored split names, in the order they are written
ALIASES = {"train": "train", "test": "test", "validation": "validation", "valid": "validation",
           "val": "validation"}
_PREFIX = re.compile(r"^([a-z]+)(?:[-_.]|$)")


def split_of(relative: str) -> str | None:
    """The stored split name a file's path (relative to the source folder) says, or None."""
    parts = relative.lower().split("/")
    for folder in parts[:-1]:
        if folder in ALIASES:
            return ALIASES[folder]
    found = _PREFIX.match(parts[-1])
    return ALIASES.get(found.group(1)) if found else None


def group_by_split(source: str, folder: str | None, paths: list[str]) -> dict[str, list[str]]:
    """``{split: paths}`` in ``ORDER``; every file under ``"train"`` when no file names a split."""
    if folder is None:  # a single file is what it is, whatever its name
        return {"train": list(paths)}
    prefix = folder.rstrip("/") + "/"
    found = {p: split_of(p[len(prefix):] if p.startswith(prefix) else p) for p in paths}
    named = [p for p in paths if found[p] is not None]
    if not named:
        return {"train": list(paths)}
    stray = next((p for p in paths if found[p] is None), None)
    if stray is not None:
        raise DataError(f"{stray}: names no split (train, test, validation) but other files of {source} do; "
                        "rename it or move it into a split folder")
    splits = {s: [p for p in paths if found[p] == s] for s in ORDER}
    if not splits["train"]:
        have = ", ".join(s for s in ORDER if splits[s])
        raise DataError(f"{source}: files of the {have} split but none of train "
                        "(name them train-*.parquet or put them in train/)")
    return {s: files for s, files in splits.items() if files}
