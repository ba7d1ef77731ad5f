"""Import text: documents (text_sources.py) split by document, tokenized (tokenize.py), packed
into windows (pack.py), written with the tokenizer.json beside the Parquet files.

Splits: a source's own (``train/``, ``test-*.txt``, ...) are kept; otherwise a seeded
``test_fraction`` of the documents (not of the windows) is the test split, so no document is in
both. A BPE learns from the training documents only. The dataset is ``language_modeling`` with
int32 token windows x and y (L,), ``num_classes`` the tokenizer's vocabulary (the Transformer
takes its vocabulary from there); ``DatasetInfo.text`` names the tokenizer file and holds the
byte length of every token id (token_bytes.py) and each split's counts.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.layout import Layout
from pipeline.data.pack import pack
from pipeline.data.sources import test_mask
from pipeline.data.splits import ORDER
from pipeline.data.store import Store
from pipeline.data.text_sources import TABLE_SUFFIXES, TEXT_SUFFIXES, column_documents, file_documents, holds_text
from pipeline.data.token_bytes import KEY as TOKEN_BYTES
from pipeline.data.token_bytes import encode_table
from pipeline.data.tokenize import TextTokenizer, build_tokenizer, parse_spec
from pipeline.data.validate import DataError

DEFAULT_SEQ_LEN = 128
TOKENIZER_FILE = "tokenizer.json"
PACKING = "each document then the end-of-document token; windows of seq_len + 1 overlap by one; the last partial " \
          "window is dropped (dropped_tokens)"


@dataclass(frozen=True)
class TextOptions:
    """``--tokenizer``, ``--seq-len`` and ``--text-column`` as given (None: not given)."""

    tokenizer: str | None = None
    seq_len: int | None = None
    text_column: str | None = None

    def given(self) -> bool:
        return self.tokenizer is not None or self.seq_len is not None or self.text_column is not None


def is_text_import(source: str, options: TextOptions) -> bool:
    """Text options were given, or the source is text files."""
    return options.given() or holds_text(source)


def check_text_args(source: str, target: str | None, features: list[str] | None, task: str | None,
                    shaped: bool) -> None:
    """Options of other kinds of source are refused by name, not ignored."""
    if source.startswith("builtin:") or source.lower().endswith(".npz"):
        raise DataError(f"{source}: --tokenizer, --seq-len and --text-column are for text sources (text files, or "
                        "a text column of Parquet or CSV), not an .npz or a built-in")
    for flag, value in (("--target", target), ("--features", features), ("--task", task),
                        ("--image-size or --channels", shaped or None)):
        if value is not None:
            raise DataError(f"{source}: {flag} is not for a text source (the tokens are the targets)")


def import_text(store: Store, source: str, name: str, options: TextOptions, test_fraction: float, seed: int,
                overwrite: bool, layout: Layout, wait: bool = False) -> DatasetInfo:
    """Import ``source`` as tokenized text windows; nothing is written unless every check passes."""
    length = _seq_len(options.seq_len)
    spec = parse_spec("bytes" if options.tokenizer is None else options.tokenizer)
    documents = _documents(source, options.text_column, layout)
    documents = _split(source, documents, test_fraction, seed)
    tokenizer = build_tokenizer(spec, documents["train"])
    splits, counts = {}, {}
    for split, docs in documents.items():
        ids = tokenizer.encode(docs)
        tokenizer.check_bytes(f"{source} ({split} split)", docs, ids)
        packed = pack(ids, tokenizer.eod_id, length)
        if len(packed.split) == 0:
            raise DataError(f"{source}: the {split} split has {packed.tokens} tokens, too few for one window of "
                            f"--seq-len {length} (plus one); lower --seq-len or add text")
        splits[split] = packed.split
        counts[split] = {**packed.counts(), "bytes": sum(len(d.encode("utf-8")) for d in docs),
                         "predicted_bytes": int(tokenizer.token_bytes[packed.split.y].sum())}
    template = DatasetInfo(
        name=name, task="language_modeling", feature_shape=(length,), feature_dtype="int32",
        label_shape=(length,), label_dtype="int32", num_classes=tokenizer.vocab_size, source=source,
        text=_metadata(spec.text, tokenizer, length, options.text_column, counts))
    with store.writer(template, overwrite, layout, wait) as writer:
        for split, packed_split in splits.items():
            writer.add_split(split)
            writer.append(split, packed_split.x, packed_split.y)
        _write_tokenizer(writer, tokenizer)
        return writer.commit()


def _seq_len(value: int | None) -> int:
    if value is None:
        return DEFAULT_SEQ_LEN
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DataError(f"--seq-len must be a positive number of tokens, not {value}")
    return int(value)


def _documents(source: str, column: str | None, layout: Layout) -> dict[str, list[str]]:
    if column is not None:
        if holds_text(source):
            raise DataError(f"{source}: --text-column picks a column of a Parquet or CSV source, not of text files")
        found = column_documents(source, column, layout)
    elif holds_text(source):
        found = file_documents(source)
    else:
        fs, path = fsx.resolve(source)
        tables = path.lower().endswith(TABLE_SUFFIXES) or (fsx.is_dir(fs, path)
                                                           and fsx.files_under(fs, path, TABLE_SUFFIXES))
        if tables:
            raise DataError(f"{source}: a Parquet or CSV source of text needs --text-column COLUMN")
        fsx.expand(source, TEXT_SUFFIXES)  # names a missing file or an empty folder
        raise DataError(f"{source}: not a text file ({', '.join(TEXT_SUFFIXES[:3])}, ...) nor a table source "
                        "with --text-column")
    if not any(found.values()):
        raise DataError(f"{source}: no text (every document is empty)")
    return found


def _split(source: str, documents: dict[str, list[str]], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """The source's own splits, else a seeded ``test_fraction`` of the documents as test."""
    for split, docs in documents.items():
        if not docs:
            raise DataError(f"{source}: the {split} split has no text")
    if "test" in documents:
        return {s: documents[s] for s in ORDER if s in documents}
    train = documents["train"]
    if len(train) < 2:
        raise DataError(f"{source}: one document cannot be split into train and test; give more documents "
                        "(files, paragraphs or rows) or a test split of its own")
    is_test = test_mask(len(train), test_fraction, seed)
    out = {"train": [d for d, t in zip(train, is_test) if not t], "test": [d for d, t in zip(train, is_test) if t]}
    if "validation" in documents:
        out["validation"] = documents["validation"]
    return out


def _metadata(spec: str, tokenizer: TextTokenizer, length: int, column: str | None,
              counts: dict[str, dict[str, int]]) -> dict:
    return {"tokenizer": TOKENIZER_FILE, "kind": tokenizer.kind, "spec": spec, "vocab_size": tokenizer.vocab_size,
            "eod_id": tokenizer.eod_id, "eod": tokenizer.eod, "seq_len": length, "text_column": column or "",
            "packing": PACKING, "splits": counts, TOKEN_BYTES: encode_table(tokenizer.token_bytes)}


def _write_tokenizer(writer, tokenizer: TextTokenizer) -> None:
    path = fsx.join(writer.staging, TOKENIZER_FILE)
    try:
        with writer.fs.open_output_stream(path) as out:
            out.write(tokenizer.to_json().encode("utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot write the tokenizer: {fsx.first_line(exc)} (nothing was stored)") from None
