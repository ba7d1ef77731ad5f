"""Dataset names: one folder name each, checked wherever a name is read or written.

Letters, digits, '_', '-' and '.', starting with a letter or digit (so never hidden, never
``..``, never a path), at most 200 characters (room for ``.NAME.tmp-XXXXXXXXXXXX`` under the
usual 255-byte limit of a file name).
"""

from __future__ import annotations

import re

from pipeline.data.validate import DataError

MAX_NAME = 200
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_dataset_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(_NAME.match(name))


def check_dataset_name(name: str) -> str:
    """``name``, or one DataError line saying what is wrong with it."""
    if not isinstance(name, str):
        raise DataError(f"bad dataset name {name!r}: not a string")
    shown = name if len(name) <= 60 else name[:40] + "..."
    if not _NAME.match(name):
        raise DataError(f"bad dataset name '{shown}': use letters, digits, '_', '-' and '.', "
                        "starting with a letter or digit")
    if len(name) > MAX_NAME:
        raise DataError(f"bad dataset name '{shown}': {len(name)} characters, at most {MAX_NAME}")
    return name
