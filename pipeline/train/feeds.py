"""Feeds: the batches of each compiled call, for one member or a whole population.

``ResidentFeed`` hands row indices into the training split already on the devices (the
compiled step gathers its rows); ``StreamFeed`` reads K batches a call from disk, stacks them on
the host and places them once. Both keep one batch order per distinct data seed, shared by the
members with that seed, and both carry the mesh their arrays are placed on. ``SlotFeed`` is a
resident feed with one batch order per slot, each at its member's own step (a refill population).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from pipeline.data.device import DeviceSplit, place_indices
from pipeline.data.order import EpochOrder
from pipeline.data.stream import StreamingReader
from pipeline.sharding import replicated


def members_split(count: int) -> bool:
    """Whether a population of ``count`` members is split over the devices (each steps its own)."""
    return jax.device_count() > 1 and count % jax.device_count() == 0


def place_population_indices(idx: np.ndarray, members: int, mesh: Mesh) -> jax.Array:
    """A population call's row indices on the devices: whole on every device when the members are
    split over the devices, else with the batch split, as a run splits it."""
    if members_split(members):
        return jax.device_put(idx, replicated(mesh))
    return place_indices(idx, mesh)


class ResidentFeed:
    """Batches of the device-resident split, as row indices: one ``EpochOrder`` per distinct seed.

    ``which`` maps members to seeds; the distinct orders are padded to ``slots`` rows so a
    group's vmapped program has one input shape, and so one compile, for all its populations.
    """

    stream = False

    def __init__(self, seeds: list[int], train: DeviceSplit, batch_size: int, mesh: Mesh, slots: int = 1):
        self.seeds, self.train, self.batch_size, self.mesh, self.slots = list(seeds), train, batch_size, mesh, slots
        distinct = list(dict.fromkeys(self.seeds))
        self.orders = [EpochOrder(train.rows, batch_size, seed) for seed in distinct]
        self.which = np.array([distinct.index(seed) for seed in self.seeds], np.int32)

    def population_args(self, first_step: int, k: int) -> tuple:
        """``(x, y, idx)``: idx (max(slots, distinct seeds), K, batch) row indices on the devices."""
        idx = [order.indices(first_step, k) for order in self.orders]
        idx = np.stack(idx + [idx[0]] * (self.slots - len(idx)))
        return self.train.x, self.train.y, place_population_indices(idx, len(self.seeds), self.mesh)

    def member_args(self, i: int, first_step: int, k: int) -> tuple:
        """``(x, y, idx)`` of member ``i``: its (K, batch) row indices, the batch split over the devices."""
        idx = place_indices(self.orders[self.which[i]].indices(first_step, k), self.mesh)
        return self.train.x, self.train.y, idx

    def keep_only(self, positions: list[int]) -> ResidentFeed:
        return ResidentFeed([self.seeds[i] for i in positions], self.train, self.batch_size, self.mesh, self.slots)

    def close(self) -> None:
        pass


class SlotFeed:
    """Batches of the device-resident split for a refill population: a batch order per slot, each at its
    own step (the global step less the step its slot took its trial, the slot's offset).

    One row of indices per slot (``which`` is the identity), so the input shape never changes
    when a slot takes a new trial with another data seed or at another step: no recompiling.
    """

    stream = False

    def __init__(self, seeds: list[int], offsets: list[int], train: DeviceSplit, batch_size: int, mesh: Mesh):
        self.train, self.batch_size, self.mesh = train, batch_size, mesh
        self.seeds, self.offsets = list(seeds), np.array(offsets, np.int64)
        self.orders = [EpochOrder(train.rows, batch_size, seed) for seed in self.seeds]
        self.which = np.arange(len(self.seeds), dtype=np.int32)

    def enter(self, slot: int, seed: int, first_step: int) -> None:
        """Slot ``slot`` takes a new trial with data seed ``seed`` at global step ``first_step``: its batches
        start again from that trial's step 0."""
        self.seeds[slot], self.offsets[slot] = seed, first_step
        self.orders[slot] = EpochOrder(self.train.rows, self.batch_size, seed)

    def _indices(self, slot: int, first_step: int, k: int) -> np.ndarray:
        return self.orders[slot].indices(max(0, first_step - int(self.offsets[slot])), k)

    def population_args(self, first_step: int, k: int) -> tuple:
        """``(x, y, idx)``: idx (slots, K, batch) row indices, each slot's at its own step."""
        idx = np.stack([self._indices(i, first_step, k) for i in range(len(self.seeds))])
        return self.train.x, self.train.y, place_population_indices(idx, len(self.seeds), self.mesh)

    def member_args(self, i: int, first_step: int, k: int) -> tuple:
        """``(x, y, idx)`` of slot ``i``: its (K, batch) row indices, the batch split over the devices."""
        return self.train.x, self.train.y, place_indices(self._indices(i, first_step, k), self.mesh)

    def keep_only(self, positions: list[int]) -> SlotFeed:
        raise NotImplementedError("a refill population keeps its size: it never repacks")

    def close(self) -> None:
        pass


class StreamFeed:
    """K batches a call read from disk, one reader per distinct data seed, shared by its members.

    The readers yield host batches; a call's K batches are stacked on the host and placed on
    the devices in one transfer. Calls must come in step order (the readers prefetch ahead); a
    population's members all stand at the same step, so each reader is read once per call
    whatever the members.
    """

    stream = True

    def __init__(self, seeds: list[int], open_reader: Callable[[int], StreamingReader], first_step: int,
                 mesh: Mesh, slots: int = 1, readers: dict[int, tuple[StreamingReader, Any]] | None = None):
        self.seeds, self.open_reader, self.mesh, self.slots = list(seeds), open_reader, mesh, slots
        distinct = list(dict.fromkeys(self.seeds))
        self.which = np.array([distinct.index(seed) for seed in self.seeds], np.int32)
        self.readers = readers or {}
        for seed in distinct:
            if seed not in self.readers:
                reader = open_reader(seed)
                self.readers[seed] = (reader, reader.iterate(first_step, on_device=False))
        self.distinct = distinct
        # (first step, each distinct seed's K host batches stacked, the same placed for one member)
        self._call: tuple[int, list[tuple], dict[int, tuple]] | None = None

    def _host_stacks(self, first_step: int, k: int) -> list[tuple]:
        if self._call is None or self._call[0] != first_step:
            per_seed = []
            for seed in self.distinct:
                stream = self.readers[seed][1]
                batches = [next(stream) for _ in range(k)]
                per_seed.append(tuple(np.stack(parts) for parts in zip(*batches, strict=True)))
            self._call = (first_step, per_seed, {})
        return self._call[1]

    def population_args(self, first_step: int, k: int) -> tuple:
        """``(x, y)``, each (max(slots, distinct seeds), K, batch, ...), placed once."""
        per_seed = self._host_stacks(first_step, k)
        per_seed = per_seed + [per_seed[0]] * (self.slots - len(per_seed))
        reader = self.readers[self.distinct[0]][0]
        return reader.place_stacked(tuple(np.stack(parts) for parts in zip(*per_seed, strict=True)), lead=2)

    def member_args(self, i: int, first_step: int, k: int) -> tuple:
        """``(x, y)`` of member ``i``: its seed's K batches, (K, batch, ...), placed once."""
        u = int(self.which[i])
        per_seed = self._host_stacks(first_step, k)
        placed = self._call[2]
        if u not in placed:
            placed[u] = self.readers[self.distinct[u]][0].place_stacked(per_seed[u], lead=1)
        return placed[u]

    def keep_only(self, positions: list[int]) -> StreamFeed:
        seeds = [self.seeds[i] for i in positions]
        for seed in set(self.readers) - set(seeds):
            self._close(*self.readers.pop(seed))
        return StreamFeed(seeds, self.open_reader, 0, self.mesh, self.slots, self.readers)

    def reader_state(self, step: int) -> dict:
        """The position of the first member's reader, for the checkpoint's meta."""
        return self.readers[self.seeds[0]][0].state(step)

    @staticmethod
    def _close(reader: StreamingReader, stream: Any) -> None:
        stream.close()
        reader.close()

    def close(self) -> None:
        for reader, stream in self.readers.values():
            self._close(reader, stream)
        self.readers = {}


Feed = ResidentFeed | SlotFeed | StreamFeed
