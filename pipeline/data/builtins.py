"""Built-in sources that need no network: ``builtin:NAME`` on the command line.

A dataset named like a built-in is imported on first use (``data=digits``).
Each loader takes no arguments and returns a ``Loaded``. A built-in's arrays do not depend on
the import's seed, which only picks the test rows of a built-in without a test split of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.data.dataset import Loaded, Split


def digits() -> Loaded:
    """scikit-learn's 8x8 handwritten digits, as 8x8 float32 images in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    return Loaded(Split(x, y), None, "classification", 10, [str(i) for i in range(10)])


def regression() -> Loaded:
    """4000 rows, 8 Gaussian features, a linear target plus a small nonlinear term and noise."""
    rng = np.random.default_rng(1234)  # fixed: the built-in is the same everywhere
    x = rng.normal(size=(4000, 8)).astype(np.float32)
    w = rng.normal(size=(8,)).astype(np.float32)
    y = x @ w + 0.5 * np.sin(2.0 * x[:, 0]) * x[:, 1] + 0.1 * rng.normal(size=4000)
    return Loaded(Split(x, y.astype(np.float32)), None, "regression")


def text() -> Loaded:
    """Byte-level token windows of the Python standard library's source (see text_corpus.py)."""
    from pipeline.data.text_corpus import text as load_text

    return load_text()


BUILTINS: dict[str, Callable[[], Loaded]] = {
    "digits": digits,
    "regression": regression,
    "text": text,
}
