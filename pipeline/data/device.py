"""The device-resident path: a split placed on the device once, batched there by index.

Arrays are placed with a ``NamedSharding`` over a one-axis ``data`` mesh of every local
device (one device: a mesh of one), so one code path serves one device and many.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.data.dataset import Split


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch: int, axis: int = 0) -> NamedSharding:
    """Split axis ``axis`` (the batch) over the ``data`` axis when it divides; else replicate.

    Split, every device computes its share of each batch and XLA adds the gradients up across
    devices (data parallelism); replicated, every device computes the whole batch.
    """
    if batch % mesh.devices.size:
        return replicated(mesh)
    return NamedSharding(mesh, PartitionSpec(*(None,) * axis, "data"))


def place_indices(idx: np.ndarray, mesh: Mesh) -> jax.Array:
    """Row indices whose last axis is the batch, on the devices with that axis split over them."""
    return jax.device_put(idx, batch_sharding(mesh, idx.shape[-1], axis=idx.ndim - 1))


@dataclass
class DeviceSplit:
    """A whole training split on the device; the step gathers its own batches."""

    x: jax.Array
    y: jax.Array

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass
class EvalBatches:
    """An evaluation split padded to whole batches: (num_batches, batch, ...) plus a mask."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array


def to_device(split: Split, mesh: Mesh) -> DeviceSplit:
    sharding = replicated(mesh)
    return DeviceSplit(jax.device_put(split.x, sharding), jax.device_put(split.y, sharding))


def eval_batches(split: Split, batch_size: int, mesh: Mesh) -> EvalBatches:
    """Pad to a multiple of ``batch_size`` (at most the split's size) and mask the padding."""
    n = len(split)
    batch = min(batch_size, n)
    num_batches = -(-n // batch)
    pad = num_batches * batch - n

    def shaped(a: np.ndarray) -> np.ndarray:
        padded = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a
        return padded.reshape(num_batches, batch, *a.shape[1:])

    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(num_batches, batch)
    sharding = replicated(mesh)
    return EvalBatches(*(jax.device_put(shaped(a), sharding) for a in (split.x, split.y)),
                       jax.device_put(mask, sharding))
