"""UTF-8 bytes of every token id, kept in a dataset's metadata (``DatasetInfo.text["token_bytes"]``).

Bits per byte divides a split's total loss by the UTF-8 bytes of the text it predicted; with a
fixed byte length per token id (byte-level tokenizers: tokenize.py checks it at import) that
is the sum of this table over the evaluated targets, exact for any tokenizer. Stored as base64
of little-endian uint16: a 50k vocabulary is about 130 kB of metadata. Light on purpose: the
objectives read it (numpy and base64 only).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

KEY = "token_bytes"


def encode_table(bytes_V: np.ndarray) -> str:
    return base64.b64encode(np.asarray(bytes_V, dtype="<u2").tobytes()).decode("ascii")


def decode_table(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u2").astype(np.int32)


def table_of(text_meta: dict[str, Any]) -> np.ndarray | None:
    """A dataset's table (int32, one entry a token id), or None when it has none (bytes are tokens)."""
    stored = text_meta.get(KEY) if isinstance(text_meta, dict) else None
    return decode_table(stored) if isinstance(stored, str) and stored else None
