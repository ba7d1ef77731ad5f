"""GPT-2's byte-level alphabet: one printable character per byte value, the way byte-level BPE
vocabularies (GPT-2, RoBERTa, Llama 3, ... and ``bpe:N`` here) spell their tokens.

A byte-level token's string maps back to its bytes one character a byte, so every token of such
a vocabulary has a fixed UTF-8 byte length: what bits per byte counts (tokenize.py). The ``bytes``
tokenizer is stored as a Hugging Face tokenizer.json written here, without the library: its ids
are the byte values and the end-of-document token follows them.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def byte_to_char() -> dict[int, str]:
    """Printable bytes stand for themselves; the others are shifted above 255 (GPT-2's ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return chars


@functools.cache
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


def byte_length(token: str) -> int:
    """UTF-8 bytes a byte-level token stands for (a character outside the alphabet counts as its own UTF-8)."""
    table = char_to_byte()
    return sum(1 if c in table else len(c.encode("utf-8")) for c in token)


def bytes_tokenizer_json(eod: str) -> dict[str, Any]:
    """A tokenizer.json whose ids are the 256 byte values, ``eod`` id 256: byte-level BPE with no merges."""
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 256, "content": eod, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": level, "post_processor": None, "decoder": level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: b for b, c in sorted(byte_to_char().items())}, "merges": []},
    }
