"""Documents packed into fixed-length windows: each document's ids, then the end-of-document id.

A split's documents, in order, make one stream of ``T`` tokens (each followed by the
end-of-document id). It is cut into ``N = (T - 1) // L`` windows of ``L + 1`` tokens that overlap
by one: ``x = window[:-1]``, ``y = window[1:]``, so each of the tokens 1..N*L is a target exactly
once. The last ``T - 1 - N*L`` tokens (fewer than ``L``) would make a partial window; it is
dropped, not padded (padding would need a per-token mask in every loss), and counted:
``windows * L + 1 + dropped == tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.dataset import Split


@dataclass
class Packed:
    """A split's windows and what went into them."""

    split: Split
    documents: int
    tokens: int  # end-of-document tokens included
    dropped: int  # the tail that makes no whole window

    def counts(self) -> dict[str, int]:
        return {"documents": self.documents, "tokens": self.tokens, "windows": len(self.split),
                "dropped_tokens": self.dropped}


def windows(tokens: np.ndarray, length: int) -> Split:
    """Consecutive windows of ``length + 1`` tokens, one token of overlap; the tail is dropped."""
    count = max(0, (len(tokens) - 1) // length)
    idx_NxL1 = np.arange(count)[:, None] * length + np.arange(length + 1)[None, :]
    w = tokens.astype(np.int32)[idx_NxL1] if count else np.zeros((0, length + 1), np.int32)
    return Split(np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:]))


def stream(documents: list[np.ndarray], eod_id: int) -> np.ndarray:
    """Every document followed by ``eod_id``, as one int32 array."""
    if not documents:
        return np.zeros(0, np.int32)
    eod = np.array([eod_id], np.int32)
    return np.concatenate([piece for doc in documents for piece in (doc.astype(np.int32), eod)])


def pack(documents: list[np.ndarray], eod_id: int, length: int) -> Packed:
    tokens = stream(documents, eod_id)
    split = windows(tokens, length)
    used = len(split) * length + 1 if len(split) else 0
    return Packed(split, len(documents), len(tokens), len(tokens) - used)
