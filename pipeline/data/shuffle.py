"""A shuffle buffer that works on whole batches of rows (columnar; no Python loop per row).

The buffer holds ``capacity`` rows. Each step draws ``batch`` distinct slots at random, emits
the rows there as the batch and writes the next ``batch`` incoming rows into those slots:
one gather and one scatter per batch, the vectorised form of the classic per-row buffer.
When the input ends, what is left is emitted in a random permutation. Every input row is
emitted exactly once, and the output is a pure function of the input order and ``rng``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

Rows = tuple[np.ndarray, ...]  # columns of equal length (features, labels)


class _Feed:
    """Rows from a stream of chunks, taken ``k`` at a time across chunk boundaries."""

    def __init__(self, chunks: Iterable[Rows]):
        self.chunks = iter(chunks)
        self.head: Rows | None = None
        self.pos = 0

    def take(self, k: int) -> Rows | None:
        """Up to ``k`` rows (fewer only when the input ends); None when nothing is left."""
        pieces: list[Rows] = []
        need = k
        while need:
            if self.head is None or self.pos == len(self.head[0]):
                self.head, self.pos = next(self.chunks, None), 0
                if self.head is None:
                    break
                continue
            n = min(need, len(self.head[0]) - self.pos)
            pieces.append(tuple(a[self.pos:self.pos + n] for a in self.head))
            self.pos += n
            need -= n
        if not pieces:
            return None
        if len(pieces) == 1:
            return pieces[0]
        return tuple(np.concatenate(cols) for cols in zip(*pieces))


def shuffled_batches(chunks: Iterable[Rows], batch: int, capacity: int, rng: np.random.Generator,
                     skip: int = 0) -> Iterator[Rows | None]:
    """Batches of ``batch`` rows (the last may be shorter), mixed through a ``capacity``-row buffer.

    The first ``skip`` batches come out as None: the buffer and ``rng`` advance exactly as
    if they had been emitted, but no rows are gathered (resuming mid-epoch).
    """
    capacity = max(capacity, batch)
    feed = _Feed(chunks)
    first = feed.take(capacity)
    if first is None:
        return
    buf = tuple(np.array(a, copy=True) for a in first)  # owned and writable
    emitted = 0
    if len(buf[0]) == capacity:
        while True:
            incoming = feed.take(batch)
            if incoming is None or len(incoming[0]) < batch:
                if incoming is not None:
                    buf = tuple(np.concatenate([b, i]) for b, i in zip(buf, incoming))
                break
            slots = rng.choice(capacity, size=batch, replace=False)
            out = None if emitted < skip else tuple(b[slots] for b in buf)
            for b, i in zip(buf, incoming):
                b[slots] = i
            emitted += 1
            yield out
    order = rng.permutation(len(buf[0]))
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        out = None if emitted < skip else tuple(b[idx] for b in buf)
        emitted += 1
        yield out
