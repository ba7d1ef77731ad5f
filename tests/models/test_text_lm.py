"""builtin:text (the standard library's source as bytes) and the LM experiment end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.data import Store
from pipeline.data.dataset import describe
from pipeline.data.text_corpus import SEQ_LEN, byte_names, corpus_files, windows


def test_windows_overlap_by_one_byte_and_shift_targets():
    split = windows(b"abcdefghij", length=3)  # (10 - 1) // 3 = 3 windows of 4 bytes
    as_text = [bytes(row.astype(np.uint8)).decode() for row in split.x]
    assert as_text == ["abc", "def", "ghi"]
    assert [bytes(row.astype(np.uint8)).decode() for row in split.y] == ["bcd", "efg", "hij"]
    assert split.x.dtype == split.y.dtype == np.int32


def test_builtin_text_round_trips_to_the_stdlib_files(cli, workdir):
    result = cli("data", "import", "builtin:text", "--name", "text")
    assert result.code == 0, result.err
    store = Store(workdir / "data")
    info = store.info("text")
    assert (info.task, info.num_classes, info.feature_shape, info.label_shape) == (
        "language_modeling", 256, (SEQ_LEN,), (SEQ_LEN,))
    files = corpus_files()
    names = {split: {p.name for p in paths} for split, paths in files.items()}
    assert names["train"] and names["test"] and not names["train"] & names["test"]  # split by file
    for split, paths in files.items():
        stored = store.read("text", split)
        text = b"".join(p.read_bytes() for p in paths)
        assert len(stored) == (len(text) - 1) // SEQ_LEN
        # the x rows laid end to end, plus the last target byte, are the files' bytes
        stream = np.concatenate([stored.x.reshape(-1), stored.y[-1, -1:]]).astype(np.uint8).tobytes()
        assert stream == text[: len(stream)]
        np.testing.assert_array_equal(stored.y[:, :-1], stored.x[:, 1:])


def _tiny_text(workdir, length: int = 16) -> None:
    """A repetitive 'program' split by line blocks, written through the Store like builtin:text."""
    lines = [f"def f{i}(x):\n    return x + {i % 7}\n".encode() for i in range(400)]
    splits = {"train": windows(b"".join(lines[:340]), length), "test": windows(b"".join(lines[340:]), length)}
    info = describe("tinytext", splits, "language_modeling", "test", byte_names(), 256)
    Store(workdir / "data").write(info, splits)


@pytest.mark.heavy
def test_text_lm_learns_a_tiny_corpus_and_reports_bits_per_byte(cli, workdir):
    _tiny_text(workdir)
    result = cli("train", "text_lm", "data=tinytext", "steps=150", "eval_every=150", "batch_size=16",
                 "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.context=16",
                 "optimizer.warmup_steps=10", "--no-progress", "--json")
    assert result.code == 0, result.err
    metrics = json.loads(result.out.strip().splitlines()[-1])["metrics"]
    loss = metrics["test/loss"]
    assert math.isclose(metrics["test/bits_per_byte"], loss / math.log(2), rel_tol=1e-6)
    assert math.isclose(metrics["test/perplexity"], math.exp(loss), rel_tol=1e-6)
    # uniform over bytes is 8 bits; a unigram model of this text 3.9: the model uses context
    assert metrics["test/bits_per_byte"] < 2.0
