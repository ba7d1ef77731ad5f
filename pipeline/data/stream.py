"""The streaming reader: a split larger than the device budget, read in batches on the fly.

Batches are a pure function of (seed, step). Epoch ``e = step // steps_per_epoch`` reads this
shard's row groups in an order drawn from ``rng(seed, e, shard)``, mixes their rows through a
shuffle buffer (shuffle.py) driven by the same generator, and cuts them into batches. A
background thread reads row groups ahead (a pool of a thread per core up to 8, results used in
order), builds
the batches and places them on the devices ahead of use; a bounded queue holds ``prefetch``.

Sharding: the split's row groups are dealt to ``shard_count`` shards round-robin (pass
``jax.process_index()``, ``jax.process_count()``); every shard takes the same number of steps.
``batch_size`` is the global batch: each shard reads ``batch_size // shard_count`` rows a step,
and shard p's rows are the p-th block of the global batch (processes lie on the mesh's outer
axis). Each process reads only its own row groups, so the global batches depend on the number
of shards; what does not is the coverage: with ``tail="pad"`` every row of the split is read
exactly once an epoch by exactly one shard (``drop`` leaves out at most each shard's tail).
Tail: ``"drop"`` ends the epoch at the last full batch of the smallest shard; ``"pad"`` pads
the last batches with zero rows and yields ``(x, y, mask)`` with a float32 mask of real rows.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.data.rowgroups import Group, SplitIndex
from pipeline.data.shuffle import Rows, shuffled_batches
from pipeline.data.validate import DataError
from pipeline.sharding import batch_axes, batch_sharding, make_mesh

TAILS = ("drop", "pad")


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class StreamingReader:
    def __init__(self, store, name: str, split: str, batch_size: int, seed: int, shuffle_buffer: int = 16384,
                 prefetch: int = 4, shard_index: int = 0, shard_count: int = 1, tail: str = "drop",
                 mesh: Mesh | None = None, read_ahead: int | None = None):
        if tail not in TAILS:
            raise DataError(f"tail policy '{tail}': use drop or pad")
        if not 0 <= shard_index < shard_count:
            raise DataError(f"shard {shard_index} of {shard_count} does not exist")
        if batch_size <= 0 or batch_size % shard_count:
            raise DataError(f"batch size {batch_size} does not split evenly over {shard_count} shards")
        self.index = SplitIndex.open(store, name, split)
        self.info = self.index.info
        self.batch_size, self.seed, self.tail = batch_size, int(seed), tail
        self.shuffle_buffer, self.prefetch = int(shuffle_buffer), max(1, int(prefetch))
        self.shard_index, self.shard_count = shard_index, shard_count
        self.local_batch = batch_size // shard_count
        groups = self.index.groups
        if len(groups) < shard_count:
            raise DataError(f"{store.path(name, split)}: {len(groups)} row groups cannot be shared by "
                            f"{shard_count} shards; re-import with a smaller --row-group-mb")
        shard_rows = [sum(g.rows for g in groups[s::shard_count]) for s in range(shard_count)]
        self.groups: list[Group] = groups[shard_index::shard_count]
        self.rows = shard_rows[shard_index]
        if tail == "drop":
            self.steps_per_epoch = min(shard_rows) // self.local_batch
        else:
            self.steps_per_epoch = math.ceil(max(shard_rows) / self.local_batch)
        if self.steps_per_epoch == 0:
            raise DataError(f"batch size {batch_size} is more than the {min(shard_rows) * shard_count} rows "
                            f"of split '{split}' of '{name}'")
        self.mesh = mesh if mesh is not None else make_mesh()  # every device on the data axis
        # Row groups decoded in parallel (pyarrow releases the GIL): one per core, up to 8.
        self.read_ahead = max(1, int(read_ahead or min(8, os.cpu_count() or 1)))
        self._pool = ThreadPoolExecutor(self.read_ahead, thread_name_prefix="pipeline-read")
        self._active: list[tuple[threading.Event, threading.Thread, queue.Queue]] = []

    # -- the order: a pure function of (seed, epoch, shard) ----------------------------------------

    def state(self, step: int) -> dict:
        """The reader's position at ``step``, for the checkpoint."""
        epoch, offset = divmod(int(step), self.steps_per_epoch)
        return {"epoch": epoch, "offset": offset, "seed": self.seed, "steps_per_epoch": self.steps_per_epoch}

    def restore(self, state: dict) -> int:
        """The step to resume at from a saved ``state``; an error if it was saved by another order."""
        for key in ("seed", "steps_per_epoch"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(f"the checkpoint's reader {key} {state[key]} differs from this run's "
                                f"{getattr(self, key)}: the batch order would not be resumed exactly")
        return int(state["epoch"]) * self.steps_per_epoch + int(state["offset"])

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, int(epoch), self.shard_index]))

    def host_epoch(self, epoch: int, skip: int = 0) -> Iterator[Rows]:
        """The host batches of ``epoch`` from step ``skip`` on (``steps_per_epoch - skip`` of them).

        The skipped ones are still drawn (the buffer and the generator advance the same) but not gathered.
        """
        rng = self._rng(epoch)
        order = rng.permutation(len(self.groups))
        batches = shuffled_batches(self._read_in_order([self.groups[i] for i in order]), self.local_batch,
                                   self.shuffle_buffer, rng, skip)
        try:
            for step in range(self.steps_per_epoch):
                rows = next(batches, None)  # None: skipped, or (pad) the shard ran out before the others
                if step >= skip:
                    yield self._tail(rows)
        finally:
            batches.close()

    def _tail(self, rows: Rows | None) -> Rows:
        b = self.local_batch
        if self.tail == "drop":
            if rows is None or len(rows[0]) != b:  # steps_per_epoch makes every batch full
                raise RuntimeError("streaming reader: short batch under tail=drop")
            return rows
        x_dtype, y_dtype = np.dtype(self.info.feature_dtype), np.dtype(self.info.label_dtype)
        if rows is None:
            rows = (np.zeros((0, *self.info.feature_shape), x_dtype), np.zeros((0, *self.info.label_shape), y_dtype))
        n = len(rows[0])
        mask = np.zeros(b, np.float32)
        mask[:n] = 1.0
        if n == b:
            return (*rows, mask)
        return (*(np.concatenate([a, np.zeros((b - n, *a.shape[1:]), a.dtype)]) for a in rows), mask)

    def _read_in_order(self, groups: list[Group]) -> Iterator[Rows]:
        """Row groups read ahead on the pool, handed on in ``groups`` order."""
        it = iter(groups)
        pending = deque(self._pool.submit(self.index.read, g) for g in itertools.islice(it, self.read_ahead))
        try:
            while pending:
                rows = pending.popleft().result()
                following = next(it, None)
                if following is not None:
                    pending.append(self._pool.submit(self.index.read, following))
                yield rows
        finally:
            for future in pending:
                future.cancel()

    # -- on the device ---------------------------------------------------------------------------

    def _sharding(self, rows: int) -> NamedSharding:
        """This shard's ``rows`` are its block of the global batch, split over its devices.

        Several processes: the global batch (every shard's rows, shard p's block p-th) must split
        over every device; one process replicates a batch that does not (as the resident path does).
        """
        devices = self.mesh.devices.size
        if jax.process_count() > 1:
            if (rows * jax.process_count()) % devices:
                raise DataError(f"bad value for 'batch_size': {self.batch_size} does not split over the {devices} "
                                "devices of the processes; use a multiple of the device count")
            return NamedSharding(self.mesh, PartitionSpec(batch_axes(self.mesh)))
        return batch_sharding(self.mesh, rows)

    def stacked_sharding(self, lead: int = 1) -> NamedSharding:
        """The sharding of batches stacked on ``lead`` new leading axes (K, or members x K)."""
        return NamedSharding(self.mesh, PartitionSpec(*(None,) * lead, *self._sharding(self.local_batch).spec))

    def place(self, rows: Rows) -> tuple[jax.Array, ...]:
        return self._put(rows, self._sharding(len(rows[0])))

    def place_stacked(self, arrays: tuple[np.ndarray, ...], lead: int = 1) -> tuple[jax.Array, ...]:
        """Host batches stacked on ``lead`` leading axes, placed in one transfer per array."""
        return self._put(arrays, self.stacked_sharding(lead))

    @staticmethod
    def _put(arrays: tuple[np.ndarray, ...], sharding: NamedSharding) -> tuple[jax.Array, ...]:
        if jax.process_count() > 1:
            return tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)
        return tuple(jax.device_put(a, sharding) for a in arrays)

    # -- iteration ---------------------------------------------------------------------------------

    def iterate(self, start_step: int = 0, on_device: bool = True) -> Iterator[tuple[jax.Array, ...]]:
        """Batches for steps ``start_step, start_step + 1, ...`` forever: ``(x, y)`` or, with
        ``tail="pad"``, ``(x, y, mask)``; on the devices, or (``on_device=False``) as host arrays
        for a caller that stacks several before placing them. Resuming mid-epoch re-reads the
        epoch from its start on the host but hands on only the batches from ``start_step`` on."""
        stop = threading.Event()
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        thread = threading.Thread(target=self._produce, args=(int(start_step), q, stop, on_device), daemon=True,
                                  name="pipeline-prefetch")
        entry = (stop, thread, q)
        self._active.append(entry)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self._halt(entry)

    def _produce(self, start_step: int, q: queue.Queue, stop: threading.Event, on_device: bool) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            epoch, offset = divmod(start_step, self.steps_per_epoch)
            while not stop.is_set():
                for rows in self.host_epoch(epoch, skip=offset):
                    if not put(self.place(rows) if on_device else rows):
                        return
                epoch, offset = epoch + 1, 0
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))

    def _halt(self, entry) -> None:
        if entry not in self._active:
            return  # already stopped (close() before the generator was finalised)
        stop, thread, q = entry
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
        self._active.remove(entry)

    def close(self) -> None:
        """Stop every prefetch thread and the read pool."""
        for entry in list(self._active):
            self._halt(entry)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StreamingReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
