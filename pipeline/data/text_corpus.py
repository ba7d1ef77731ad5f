"""``builtin:text``: byte-level token sequences from the running Python's standard library source.

The corpus is every top-level module ``STDLIB/*.py`` of at most ``MAX_FILE_BYTES``, in sorted
order (the machine-specific ``_sysconfigdata*`` files excluded): about 2.8 MB on CPython 3.11,
nothing downloaded. Files are split between train and test by a hash of their name, so a file
is wholly in one split and the split does not depend on which other files exist. Each split's
files are concatenated (sorted) and cut into windows of ``SEQ_LEN + 1`` bytes that overlap by
one byte: ``x = window[:-1]`` and ``y = window[1:]``, so every byte after the first is a
target exactly once. No end-of-document token: the files run on into each other. Other text is
imported with ``pipeline data import --tokenizer`` (text_import.py).
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import numpy as np

from pipeline.data.dataset import Loaded, Split
from pipeline.data.pack import windows as token_windows
from pipeline.data.validate import DataError

SEQ_LEN = 128  # tokens per example; a model's context must be at least this
VOCAB = 256  # bytes
MAX_FILE_BYTES = 64 * 1024  # leaves out the few very large modules; keeps the import quick
TEST_BUCKETS = 10  # a file is in test when crc32(name) % TEST_BUCKETS == 0 (about 10%)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> dict[str, list[Path]]:
    """The sorted source files of each split: ``{"train": [...], "test": [...]}``."""
    root = stdlib_dir() if root is None else root
    files = sorted(p for p in root.glob("*.py")
                   if p.is_file() and not p.name.startswith("_sysconfigdata")
                   and p.stat().st_size <= MAX_FILE_BYTES)
    test = [p for p in files if zlib.crc32(p.name.encode()) % TEST_BUCKETS == 0]
    train = [p for p in files if zlib.crc32(p.name.encode()) % TEST_BUCKETS != 0]
    return {"train": train, "test": test}


def windows(data: bytes, length: int = SEQ_LEN) -> Split:
    """Consecutive windows of ``length + 1`` bytes, one byte of overlap; the tail is dropped (pack.py)."""
    return token_windows(np.frombuffer(data, np.uint8), length)


def byte_names() -> list[str]:
    """A readable name per byte value: the character when printable ASCII, else ``\\xNN``."""
    return [chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in range(VOCAB)]


def text() -> Loaded:
    """Train and test token windows of the running interpreter's standard library."""
    files = corpus_files()
    splits = {}
    for name, paths in files.items():
        split = windows(b"".join(p.read_bytes() for p in paths))
        if len(split) == 0:
            raise DataError(f"builtin:text: no {name} text found under {stdlib_dir()}")
        splits[name] = split
    return Loaded(splits["train"], splits["test"], "language_modeling", VOCAB, byte_names())
