"""A stored text dataset read back: its tokenizer, token ids decoded to text, what ``data show`` says."""

from __future__ import annotations

from pipeline.data import fs as fsx
from pipeline.data.dataset import DatasetInfo
from pipeline.data.store import Store
from pipeline.data.tokenize import TextTokenizer, from_json
from pipeline.data.validate import DataError


def stored_tokenizer(store: Store, name: str) -> TextTokenizer:
    """The tokenizer an import stored beside dataset ``name`` (its tokenizer.json)."""
    info = store.info(name)
    file = info.text.get("tokenizer") if info.text else None
    if not isinstance(file, str) or not file or fsx.basename(file) != file:
        raise DataError(f"dataset '{name}' holds no tokenized text (import text with --tokenizer to have one)")
    path = fsx.join(store.path(name), file)
    try:
        with store.fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the dataset's tokenizer: {fsx.first_line(exc)}") from None
    return from_json(text, "bytes" if info.text.get("kind") == "bytes" else "file", path)


def decode(dataset: str, tokens, store: Store | None = None) -> str:
    """The text of ``tokens`` (ids of any shape, e.g. a window of the dataset or a model's sample)."""
    return stored_tokenizer(store if store is not None else Store(), dataset).decode(tokens)


def show_lines(info: DatasetInfo) -> list[str]:
    """``pipeline data show`` lines of a text dataset: its tokenizer and each split's counts; none otherwise."""
    text = info.text
    if not text:
        return []
    lines = [f"tokenizer    {text.get('spec')}: {text.get('vocab_size')} ids, end of document "
             f"{text.get('eod')!r} = {text.get('eod_id')}, {text.get('seq_len')} tokens a window; "
             f"{text.get('tokenizer')} beside the data"]
    for split, c in text.get("splits", {}).items():
        lines.append(f"text         {split}: {c.get('documents', 0):,} documents, {c.get('bytes', 0):,} bytes, "
                     f"{c.get('tokens', 0):,} tokens, {c.get('windows', 0):,} windows, "
                     f"{c.get('dropped_tokens', 0):,} tokens dropped (last partial window)")
    return lines
