"""A dataset's content fingerprint, computed streaming, chunk by chunk.

Definition (format version 2): for every split in sorted name order and every column in the
order (features, labels), SHA-256 of the column's values as little-endian bytes, row-major,
rows in stored order. The fingerprint is the first 32 hex digits of the SHA-256 of the lines
``SPLIT/ROLE:DTYPE:ROW_SHAPE:ROWS:DIGEST;`` in that order, prefixed ``sha256:``.
It does not depend on how rows are cut into chunks, row groups or files.
"""

from __future__ import annotations

import hashlib

import numpy as np

ROLES = ("x", "y")


class Fingerprint:
    """Feed ``update(split, x, y)`` chunks in row order; ``hexdigest()`` at the end."""

    def __init__(self) -> None:
        self._digests: dict[tuple[str, str], hashlib._Hash] = {}
        self._meta: dict[tuple[str, str], tuple[str, tuple[int, ...], int]] = {}

    def update(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        for role, arr in zip(ROLES, (x, y)):
            key = (split, role)
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            row_shape = tuple(int(d) for d in arr.shape[1:])
            dtype, _, rows = self._meta.get(key, (arr.dtype.str, row_shape, 0))
            self._meta[key] = (dtype, row_shape, rows + int(arr.shape[0]))
            digest = self._digests.setdefault(key, hashlib.sha256())
            if arr.size:
                digest.update(memoryview(arr).cast("B"))

    def hexdigest(self) -> str:
        summary = hashlib.sha256()
        for split, role in sorted(self._digests, key=lambda k: (k[0], ROLES.index(k[1]))):
            dtype, shape, rows = self._meta[(split, role)]
            line = f"{split}/{role}:{dtype}:{list(shape)}:{rows}:{self._digests[(split, role)].hexdigest()};"
            summary.update(line.encode())
        return "sha256:" + summary.hexdigest()[:32]
