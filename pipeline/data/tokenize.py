"""Tokenizers of text imports: ``bytes``, ``bpe:VOCAB`` (trained here) or a given tokenizer.json.

``bytes`` needs no library: ids 0..255 are the UTF-8 bytes, 256 ends a document. ``bpe:VOCAB``
trains a byte-level BPE of VOCAB ids (256 byte tokens and the end-of-document token included)
with Hugging Face ``tokenizers`` (the ``text`` extra) on the training documents only. A
tokenizer.json is loaded as it is; its end-of-document token is the first of ``EOD_NAMES`` it
has, else ``<|endoftext|>`` is added after its last id.

Every tokenizer has a byte length per token id (special tokens 0): bits per byte sums it over the
predicted tokens (token_bytes.py). ``check_bytes`` proves, document by document at import, that
the tokens spell each document's UTF-8 bytes exactly; a tokenizer that normalizes text or drops
spaces (WordPiece, SentencePiece's ``▁``) fails it, since bits per byte could not be exact.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data import fs as fsx
from pipeline.data.byte_alphabet import byte_length, bytes_tokenizer_json
from pipeline.data.validate import DataError

EOD = "<|endoftext|>"
EOD_NAMES = (EOD, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")
EXTRA = "pip install 'pipeline[text]'"
MIN_BPE_VOCAB = 257  # the 256 byte tokens and the end-of-document token
MAX_VOCAB = 1 << 20
_BPE = re.compile(r"^bpe:(\d+)$")


@dataclass(frozen=True)
class TokenizerSpec:
    """What ``--tokenizer`` said: ``kind`` bytes | bpe | file, with ``vocab`` (bpe) or ``path`` (file)."""

    text: str
    kind: str
    vocab: int = 0
    path: str = ""


def parse_spec(text: str) -> TokenizerSpec:
    """``bytes``, ``bpe:VOCAB`` or the path of an existing tokenizer.json; anything else is one line."""
    if text == "bytes":
        return TokenizerSpec(text, "bytes")
    found = _BPE.match(text)
    if found:
        vocab = int(found.group(1))
        if not MIN_BPE_VOCAB <= vocab <= MAX_VOCAB:
            raise DataError(f"--tokenizer {text}: the vocabulary must hold {MIN_BPE_VOCAB} to {MAX_VOCAB} ids "
                            f"(256 bytes and the end-of-document token at least)")
        return TokenizerSpec(text, "bpe", vocab=vocab)
    if text.endswith(".json") and not text.startswith("bpe"):
        fs, path = fsx.resolve(text)
        if fsx.is_file(fs, path):
            return TokenizerSpec(text, "file", path=text)
        raise DataError(f"--tokenizer {text}: no such tokenizer.json file")
    raise DataError(f"--tokenizer {text!r}: use bytes, bpe:VOCAB (a number of ids, e.g. bpe:8192) or the path "
                    "of a tokenizer.json")


def _library(what: str):
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"--tokenizer {what} needs the Hugging Face tokenizers library (the 'text' extra): "
                        f"{EXTRA}") from None
    return tokenizers


class TextTokenizer:
    """Encode documents to id arrays and ids back to text; ``token_bytes`` (V,) and ``eod_id`` go with it.

    ``hf`` is a ``tokenizers.Tokenizer``, or None for ``bytes`` (numpy only).
    """

    def __init__(self, kind: str, hf: Any | None, eod_id: int, eod: str = EOD):
        self.kind, self.hf, self.eod_id, self.eod = kind, hf, eod_id, eod
        if hf is None:
            self.vocab_size = 257
            self.token_bytes = np.append(np.ones(256, np.int32), 0).astype(np.int32)
        else:
            hf.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text, not the marker
            self.token_bytes = _hf_token_bytes(hf)
            self.vocab_size = len(self.token_bytes)

    def encode(self, documents: list[str]) -> list[np.ndarray]:
        """One int32 id array a document, no end-of-document token (packing adds it)."""
        if self.hf is None:
            return [np.frombuffer(d.encode("utf-8"), np.uint8).astype(np.int32) for d in documents]
        encoded = self.hf.encode_batch_fast(documents, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encoded]

    def decode(self, ids) -> str:
        """The text of ``ids``; the end-of-document token shows as its own string."""
        ids = np.asarray(ids).reshape(-1).astype(np.int64)
        if self.hf is not None:
            return self.hf.decode(ids.tolist(), skip_special_tokens=False)
        bounds = np.flatnonzero(ids == self.eod_id)
        pieces = np.split(ids, bounds)
        texts = [bytes(p[p != self.eod_id].astype(np.uint8)).decode("utf-8", errors="replace") for p in pieces]
        return self.eod.join(texts)

    def to_json(self) -> str:
        """The tokenizer.json stored beside the dataset (Hugging Face's format, ``bytes`` included)."""
        if self.hf is None:
            return json.dumps(bytes_tokenizer_json(self.eod), ensure_ascii=False, indent=1)
        return self.hf.to_str(pretty=True)

    def check_bytes(self, where: str, documents: list[str], ids: list[np.ndarray]) -> None:
        """Each document's tokens add up to its UTF-8 bytes (what makes bits per byte exact)."""
        for i, (doc, doc_ids) in enumerate(zip(documents, ids)):
            if len(doc_ids) and (doc_ids.min() < 0 or doc_ids.max() >= self.vocab_size):
                raise DataError(f"{where}: document {i}: token id {int(doc_ids.max())} outside the tokenizer's "
                                f"{self.vocab_size} ids")
            spelled, real = int(self.token_bytes[doc_ids].sum()), len(doc.encode("utf-8"))
            if spelled != real:
                raise DataError(f"{where}: document {i} has {real} UTF-8 bytes but its tokens spell {spelled}: "
                                "the tokenizer does not keep text byte for byte (bits per byte needs that); "
                                "use bytes, bpe:VOCAB or a byte-level tokenizer.json")


def _hf_token_bytes(hf) -> np.ndarray:
    """Byte length of every id: byte-level vocabularies by their alphabet, others by decoding the id alone."""
    described = json.loads(hf.to_str())
    level = _is_byte_level(described.get("decoder"))
    vocab = hf.get_vocab(with_added_tokens=True)
    added = hf.get_added_tokens_decoder()
    table = np.zeros(max(vocab.values()) + 1, np.int32)
    for token, i in vocab.items():
        if i in added:
            table[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
        elif level:
            table[i] = byte_length(token)
        else:
            table[i] = len(hf.decode([i], skip_special_tokens=False).encode("utf-8"))
    return table


def _is_byte_level(decoder: Any) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return decoder.get("type") == "Sequence" and any(_is_byte_level(d) for d in decoder.get("decoders", []))


def build_tokenizer(spec: TokenizerSpec, train_documents: list[str]) -> TextTokenizer:
    """The import's tokenizer: ``bytes``, a BPE trained on ``train_documents``, or the file's."""
    if spec.kind == "bytes":
        return TextTokenizer("bytes", None, 256)
    if spec.kind == "bpe":
        return _train_bpe(spec, train_documents)
    fs, path = fsx.resolve(spec.path)
    try:
        with fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{spec.path}: cannot read: {fsx.first_line(exc)}") from None
    return from_json(text, "file", spec.path)


def _train_bpe(spec: TokenizerSpec, documents: list[str]) -> TextTokenizer:
    tk = _library(spec.text)
    hf = tk.Tokenizer(tk.models.BPE())
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=spec.vocab, special_tokens=[EOD], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(documents, trainer, length=len(documents))
    return TextTokenizer("bpe", hf, hf.token_to_id(EOD))


def from_json(text: str, kind: str, where: str) -> TextTokenizer:
    """A tokenizer.json (a given file, or one stored beside a dataset), its end-of-document token found or added."""
    if kind == "bytes":
        return TextTokenizer("bytes", None, 256, _bytes_eod(text, where))
    tk = _library(where)
    try:
        hf = tk.Tokenizer.from_str(text)
    except Exception as exc:  # the library raises plain Exceptions for malformed files
        raise DataError(f"{where}: not a tokenizer.json ({fsx.first_line(exc)})") from None
    vocab = hf.get_vocab(with_added_tokens=True)
    if not vocab:
        raise DataError(f"{where}: the tokenizer has an empty vocabulary")
    eod = next((name for name in EOD_NAMES if name in vocab), None)
    if eod is None:
        eod = EOD
        hf.add_special_tokens([tk.AddedToken(EOD, special=True, normalized=False)])
    return TextTokenizer(kind, hf, hf.token_to_id(eod), eod)


def _bytes_eod(text: str, where: str) -> str:
    try:
        return next(t["content"] for t in json.loads(text)["added_tokens"] if t["id"] == 256)
    except (ValueError, KeyError, TypeError, StopIteration):
        raise DataError(f"{where}: not the bytes tokenizer's tokenizer.json") from None
