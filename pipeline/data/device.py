"""The device-resident path: a split placed on the devices once, batched there by index.

Arrays are placed with a ``NamedSharding`` over the run's mesh (``pipeline.sharding``: axes
``data`` x ``fsdp``; one device is a mesh of one), so one code path serves one device and many.
Every function here takes that mesh as an argument.

Several processes: the training split is sharded by rows over every device, so each process
reads and holds only its own contiguous block of rows (``process_rows``); the compiled step
gathers each batch's rows by their global indices, wherever they live. The batch order (the
indices) is the same for any number of processes. Evaluation splits are small: every process
holds them whole, as one process does.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.data.dataset import Split
from pipeline.sharding import batch_sharding, place, replicated


def put(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host data (the same on every process) on ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    return place(a, sharding)


def place_indices(idx: np.ndarray, mesh: Mesh) -> jax.Array:
    """Row indices whose last axis is the batch, on the devices with that axis split over them."""
    return put(idx, batch_sharding(mesh, idx.shape[-1], axis=idx.ndim - 1))


@dataclass
class DeviceSplit:
    """A whole training split on the devices; the step gathers its own batches.

    Several processes: ``x`` and ``y`` are row-sharded over every device and padded to a
    multiple of the device count; ``num_rows`` is the split's own row count.
    """

    x: jax.Array
    y: jax.Array
    num_rows: int | None = None

    @property
    def rows(self) -> int:
        return int(self.x.shape[0]) if self.num_rows is None else self.num_rows


@dataclass
class EvalBatches:
    """An evaluation split padded to whole batches: (num_batches, batch, ...) plus a mask."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array


def process_rows(num_rows: int, mesh: Mesh) -> tuple[int, int, int]:
    """``(start, stop, padded)``: the rows this process holds of a split row-sharded over ``mesh``.

    The split is padded to ``padded`` rows (a multiple of the device count); the devices hold
    equal blocks in mesh order and processes lie on the outer axis, so each process holds one
    contiguous block. ``stop`` is clipped to ``num_rows`` (the padding is zeros).
    """
    devices = list(mesh.devices.flat)
    per_device = -(-num_rows // len(devices))
    mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("this process's devices are not contiguous in the mesh")
    start, stop = mine[0] * per_device, (mine[-1] + 1) * per_device
    return min(start, num_rows), min(stop, num_rows), per_device * len(devices)


def row_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def to_device(split: Split, mesh: Mesh, num_rows: int | None = None) -> DeviceSplit:
    """The training split on the devices: replicated in one process; row-sharded over several.

    Several processes: ``split`` holds this process's rows only (``process_rows``), and
    ``num_rows`` the split's whole row count.
    """
    if jax.process_count() == 1:
        sharding = replicated(mesh)
        return DeviceSplit(jax.device_put(split.x, sharding), jax.device_put(split.y, sharding))
    total = len(split) if num_rows is None else num_rows
    start, stop, padded = process_rows(total, mesh)
    if len(split) != stop - start:
        raise ValueError(f"this process holds {len(split)} rows, not its {stop - start}")
    sharding = row_sharding(mesh)
    block = padded // jax.process_count()

    def local(a: np.ndarray) -> jax.Array:
        rows = np.zeros((block, *a.shape[1:]), a.dtype)
        rows[:len(a)] = a
        return jax.make_array_from_process_local_data(sharding, rows, (padded, *a.shape[1:]))

    return DeviceSplit(local(split.x), local(split.y), total)


def eval_batches(split: Split, batch_size: int, mesh: Mesh, exact: bool = False) -> EvalBatches:
    """Pad to a multiple of ``batch_size`` (at most the split's size, unless ``exact``: splits of
    different sizes then share one shape, so one compiled evaluation) and mask the padding."""
    n = len(split)
    batch = batch_size if exact else min(batch_size, n)
    num_batches = -(-n // batch)
    pad = num_batches * batch - n

    def shaped(a: np.ndarray) -> np.ndarray:
        padded = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        return padded.reshape(num_batches, batch, *a.shape[1:])

    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(num_batches, batch)
    sharding = replicated(mesh)
    return EvalBatches(*(put(shaped(a), sharding) for a in (split.x, split.y)), put(mask, sharding))


def read_rows(store, name: str, split: str, start: int, stop: int) -> Split:
    """Rows ``start:stop`` of a stored split, reading only the row groups that hold them (checked as
    ``Store.read`` checks them)."""
    from pipeline.data.rowgroups import SplitIndex

    index = SplitIndex.open(store, name, split)
    xs, ys, first = [], [], 0
    for group in index.groups:
        low, high = first, first + group.rows
        first = high
        if high <= start or low >= stop:
            continue
        x, y = index.read(group)
        xs.append(x[max(start, low) - low:min(stop, high) - low])
        ys.append(y[max(start, low) - low:min(stop, high) - low])
    if not xs:
        info = index.info
        return Split(np.zeros((0, *info.feature_shape), info.feature_dtype),
                     np.zeros((0, *info.label_shape), info.label_dtype))
    return Split(np.concatenate(xs), np.concatenate(ys))
