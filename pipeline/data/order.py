"""The batch order of a device-resident split: which rows each step trains on.

Epoch ``e`` is a permutation of the rows drawn by numpy from ``(seed, e)``; the tail that
does not fill a batch is dropped. The order is a pure function of (seed, step), so a
resumed run and a vmapped sweep member see exactly the batches of an uninterrupted solo
run. It is computed on the host once per epoch (a permutation inside the compiled step
cost the digits MLP a third of its step time) and handed to each call as a small
(K, batch) array of row indices; the step gathers the rows on the device.
"""

from __future__ import annotations

import numpy as np


class EpochOrder:
    def __init__(self, num_rows: int, batch_size: int, seed: int):
        if batch_size > num_rows:
            raise ValueError(f"batch of {batch_size} rows from a split of {num_rows}")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, int(seed)
        self.steps_per_epoch = num_rows // batch_size
        self._epochs: dict[int, np.ndarray] = {}  # epochs the latest call touched

    def epoch(self, e: int) -> np.ndarray:
        """Epoch ``e`` as (steps_per_epoch, batch) row indices."""
        if e not in self._epochs:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, e]))
            used = self.steps_per_epoch * self.batch_size
            self._epochs[e] = rng.permutation(self.num_rows)[:used].astype(np.int32).reshape(-1, self.batch_size)
        return self._epochs[e]

    def indices(self, first_step: int, num_steps: int) -> np.ndarray:
        """Row indices (num_steps, batch) of steps ``first_step ... first_step + num_steps - 1``."""
        out = np.empty((num_steps, self.batch_size), np.int32)
        first_epoch = first_step // self.steps_per_epoch
        for e in [e for e in self._epochs if e < first_epoch]:  # steps only move forward
            del self._epochs[e]
        step, done = first_step, 0
        while done < num_steps:
            e, offset = divmod(step, self.steps_per_epoch)
            take = min(num_steps - done, self.steps_per_epoch - offset)
            out[done:done + take] = self.epoch(e)[offset:offset + take]
            step, done = step + take, done + take
        return out
