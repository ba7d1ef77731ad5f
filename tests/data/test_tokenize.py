"""Tokenized text in the store: tokenizers round trip, packing counts every token, the tokenizer is
stored and reloads, text_lm trains on a BPE import with exact bits per byte, bad input is one line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pipeline.data import Store
from pipeline.data.pack import pack, stream
from pipeline.data.text_dataset import decode, stored_tokenizer
from pipeline.data.token_bytes import table_of
from pipeline.data.tokenize import EOD, TextTokenizer, build_tokenizer, from_json, parse_spec
from pipeline.track.metrics import read_metrics
from tests.data.test_import_cli import expect_error

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

UNICODE = ["Grüße aus Köln — naïve café, ½ × π ≈ 1.57", "日本語のテキスト、絵文字 🙂🚀 and tabs\tand\r\nCRLF",
           "plain ascii <|endoftext|> inside a document", "Ελληνικά καὶ русский текст; emoji 👩‍👩‍👧 zwj"]


def _documents(n: int = 60) -> list[str]:
    return [f"{UNICODE[i % len(UNICODE)]} number {i}: def f{i}(x): return x * {i % 7} ✓" for i in range(n)]


def _write_corpus(folder, documents: list[str]):
    folder.mkdir()
    for i, text in enumerate(documents):
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe() -> TextTokenizer:
    pytest.importorskip("tokenizers")  # the 'text' extra; bytes needs no library
    return build_tokenizer(parse_spec("bpe:300"), _documents())


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_encode_decode_round_trip_is_exact_on_unicode(kind, request):
    tokenizer = request.getfixturevalue("bpe") if kind == "bpe" else build_tokenizer(parse_spec("bytes"), [])
    ids = tokenizer.encode(UNICODE)
    for text, doc_ids in zip(UNICODE, ids):
        assert tokenizer.decode(doc_ids) == text
        assert int(tokenizer.token_bytes[doc_ids].sum()) == len(text.encode("utf-8"))  # bytes per token are exact
        assert tokenizer.eod_id not in doc_ids  # a literal "<|endoftext|>" in the text stays text
    joined = tokenizer.decode(stream(ids, tokenizer.eod_id))
    assert joined == "".join(t + EOD for t in UNICODE)
    if kind == "bpe":
        assert sum(map(len, ids)) < sum(len(t.encode()) for t in UNICODE)  # merges were learned


@pytest.mark.parametrize("length", [1, 7, 16, 1000])
def test_packing_loses_no_tokens(length):
    rng = np.random.default_rng(length)
    docs = [rng.integers(0, 256, size=int(rng.integers(0, 50)), dtype=np.int32) for _ in range(40)]
    packed = pack(docs, 256, length)
    tokens = sum(len(d) + 1 for d in docs)  # each document and its end-of-document token
    assert packed.tokens == tokens and packed.documents == 40
    windows = len(packed.split)
    assert windows == (tokens - 1) // length and packed.dropped < length
    assert windows * length + 1 + packed.dropped == tokens if windows else packed.dropped == tokens
    if windows:
        laid = np.concatenate([packed.split.x.reshape(-1), packed.split.y[-1, -1:]])
        np.testing.assert_array_equal(laid, stream(docs, 256)[:len(laid)])
        np.testing.assert_array_equal(packed.split.y[:, :-1], packed.split.x[:, 1:])


def test_an_imported_corpus_counts_every_token_and_splits_by_document(cli, workdir, tmp_path):
    docs = _documents()
    corpus = _write_corpus(tmp_path / "corpus", docs)
    result = cli("data", "import", str(corpus), "--name", "t", "--tokenizer", "bytes", "--seq-len", "32",
                 "--seed", "3")
    assert result.code == 0, result.err
    store = Store(workdir / "data")
    info = store.info("t")
    assert (info.task, info.num_classes, info.feature_shape) == ("language_modeling", 257, (32,))
    counts = info.text["splits"]
    assert counts["train"]["documents"] + counts["test"]["documents"] == len(docs)
    assert counts["test"]["documents"] == round(0.2 * len(docs))
    total_bytes = sum(len(d.encode()) for d in docs)
    assert counts["train"]["bytes"] + counts["test"]["bytes"] == total_bytes
    table, seen = table_of(info.text), {}
    for split in ("train", "test"):
        c, stored = counts[split], store.read("t", split)
        assert c["tokens"] == c["bytes"] + c["documents"]  # bytes: a token a byte, plus an EOD a document
        assert len(stored) == c["windows"] and c["windows"] * 32 + 1 + c["dropped_tokens"] == c["tokens"]
        assert c["predicted_bytes"] == int(table[stored.y].sum())
        # the split's windows laid end to end are whole documents, each followed by the end-of-document id
        laid = np.concatenate([stored.x.reshape(-1), stored.y[-1, -1:]])
        ends = np.flatnonzero(laid == 256)
        texts = [decode("t", piece[:-1], store=store) for piece in np.split(laid[:ends[-1] + 1], ends[:-1] + 1)]
        assert all(t in docs for t in texts) and len(texts) == len(set(texts))
        seen[split] = set(texts)
    assert not seen["train"] & seen["test"]  # a document is in one split
    assert "tokenizer    bytes: 257 ids" in cli("data", "show", "t").out


def test_the_stored_tokenizer_reloads_and_gives_the_same_ids(cli, workdir, tmp_path, bpe):
    again = from_json(bpe.to_json(), "file", "memory")  # the file format round trip
    for a, b in zip(bpe.encode(UNICODE), again.encode(UNICODE)):
        np.testing.assert_array_equal(a, b)
    corpus = _write_corpus(tmp_path / "corpus", _documents())
    assert cli("data", "import", str(corpus), "--name", "b", "--tokenizer", "bpe:300", "--seq-len", "16").code == 0
    store = Store(workdir / "data")
    assert (workdir / "data" / "b" / "tokenizer.json").is_file()
    reloaded, info = stored_tokenizer(store, "b"), store.info("b")
    assert info.num_classes == reloaded.vocab_size == info.text["vocab_size"] <= 300
    np.testing.assert_array_equal(reloaded.token_bytes, table_of(info.text))
    # the whole documents of the stored train windows, re-encoded by the reloaded tokenizer, are the stored ids
    train = store.read("b", "train")
    laid = np.concatenate([train.x.reshape(-1), train.y[-1, -1:]])
    ends = np.flatnonzero(laid == reloaded.eod_id)
    stored_docs = [d[d != reloaded.eod_id] for d in np.split(laid[:ends[-1] + 1], ends[:-1] + 1)]
    assert len(stored_docs) > 10
    for doc_ids in stored_docs:
        np.testing.assert_array_equal(reloaded.encode([reloaded.decode(doc_ids)])[0], doc_ids)
    # the stored file, given back as --tokenizer, imports the same windows
    given = cli("data", "import", str(corpus), "--name", "b2", "--tokenizer", str(workdir / "data/b/tokenizer.json"),
                "--seq-len", "16")
    assert given.code == 0, given.err
    assert store.info("b2").fingerprint == info.fingerprint
    # the bytes tokenizer's hand-written tokenizer.json loads in the library with the byte values as ids
    from tokenizers import Tokenizer

    assert cli("data", "import", str(corpus), "--name", "y", "--seq-len", "16").code == 0
    hf = Tokenizer.from_file(str(workdir / "data" / "y" / "tokenizer.json"))
    assert hf.encode(UNICODE[1], add_special_tokens=False).ids == list(UNICODE[1].encode())
    assert hf.token_to_id(EOD) == 256


def test_text_lm_trains_on_a_bpe_corpus_with_exact_bits_per_byte(cli, workdir, tmp_path, bpe):
    corpus = _write_corpus(tmp_path / "corpus", _documents(200))
    assert cli("data", "import", str(corpus), "--name", "lm", "--tokenizer", "bpe:320", "--seq-len", "16").code == 0
    result = cli("train", "text_lm", "data=lm", "steps=40", "eval_every=40", "batch_size=16", "model.d_model=32",
                 "model.n_layers=1", "model.n_heads=2", "model.context=16", "optimizer.warmup_steps=5",
                 "--no-progress", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out.strip().splitlines()[-1])
    metrics = summary["metrics"]
    info = Store(workdir / "data").info("lm")
    test = info.text["splits"]["test"]
    targets = test["windows"] * 16  # every test window's 16 targets are evaluated
    closed = metrics["test/loss"] * targets / math.log(2) / test["predicted_bytes"]
    assert math.isclose(metrics["test/bits_per_byte"], closed, rel_tol=1e-5)
    assert metrics["test/bits_per_byte"] < metrics["test/loss"] / math.log(2)  # a BPE token is more than a byte
    table = read_metrics(Path(summary["run_dir"]) / "metrics.parquet").to_pandas()
    train_loss = table[(table.split == "train") & (table.name == "loss")].sort_values("step")["value"].to_numpy()
    assert train_loss[-5:].mean() < train_loss[:5].mean() - 0.5
    assert train_loss[0] == pytest.approx(math.log(info.num_classes), abs=0.3)  # starts near uniform


def test_a_text_column_of_parquet_and_csv(cli, workdir, tmp_path):
    docs = [d.replace("\r\n", " ") for d in _documents(30)]  # pyarrow's CSV reader takes no newline in a value
    pq.write_table(pa.table({"id": list(range(30)), "content": docs}), tmp_path / "train.parquet")
    result = cli("data", "import", str(tmp_path / "train.parquet"), "--name", "p", "--text-column", "content",
                 "--seq-len", "8")
    assert result.code == 0, result.err
    store = Store(workdir / "data")
    counts = store.info("p").text["splits"]
    assert counts["train"]["documents"] + counts["test"]["documents"] == 30
    assert counts["train"]["bytes"] + counts["test"]["bytes"] == sum(len(d.encode()) for d in docs)
    pcsv.write_csv(pa.table({"text": docs}), tmp_path / "docs.csv")
    assert cli("data", "import", str(tmp_path / "docs.csv"), "--name", "c", "--text-column", "text",
               "--seq-len", "8").code == 0
    assert store.info("c").fingerprint == store.info("p").fingerprint  # the same documents, the same seeded split


def test_bad_text_input_is_one_line(cli, workdir, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.txt").write_text("")
    expect_error(cli, workdir, ["data", "import", str(empty), "--name", "e"], "no text (every document is empty)")
    corpus = _write_corpus(tmp_path / "corpus", _documents(10))
    expect_error(cli, workdir, ["data", "import", str(corpus), "--name", "e", "--tokenizer", "bpe:lots"],
                 "--tokenizer 'bpe:lots'", "bytes, bpe:VOCAB")
    expect_error(cli, workdir, ["data", "import", str(corpus), "--name", "e", "--tokenizer", "bpe:100"],
                 "--tokenizer bpe:100", "257")
    expect_error(cli, workdir, ["data", "import", str(corpus), "--name", "e", "--tokenizer", "nope/tokenizer.json"],
                 "nope/tokenizer.json: no such tokenizer.json file")
    pq.write_table(pa.table({"content": ["a b c"] * 5}), tmp_path / "t.parquet")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "t.parquet"), "--name", "e", "--text-column", "text"],
                 "t.parquet: no text column 'text'", "columns: content")
    expect_error(cli, workdir, ["data", "import", str(tmp_path / "t.parquet"), "--name", "e", "--tokenizer", "bytes"],
                 "needs --text-column COLUMN")
    expect_error(cli, workdir, ["data", "import", str(corpus), "--name", "e", "--seq-len", "100000"],
                 "too few for one window of --seq-len 100000")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as without the 'text' extra
    expect_error(cli, workdir, ["data", "import", str(corpus), "--name", "e", "--tokenizer", "bpe:300"],
                 "tokenizers library", "pip install 'pipeline[text]'")
