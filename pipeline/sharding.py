"""The device mesh (``data`` x ``fsdp``) and where arrays live on it.

* ``make_mesh(data, fsdp)``: a ``Mesh`` with axes ``('data', 'fsdp')``. Processes lie on the
  outer axis: in row-major order process 0's devices come first, so each process holds whole
  rows of the mesh when ``fsdp`` fits in one host (an ``fsdp`` larger than a host spans hosts).
* Batches are split over both axes (``batch_spec``): every device computes its share of each
  batch, and XLA adds the gradients up (data parallelism).
* Parameters and optimizer state are sharded over ``fsdp`` by big_vision's size rule
  (``fsdp_spec``): an array of at least ``min_size`` elements is split along its largest
  dimension that ``fsdp`` divides evenly; anything else is replicated. With ``fsdp=1`` every
  array is replicated: plain data parallelism.

One device is a mesh of one (1 x 1), so one code path serves one device and many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pipeline.config import ConfigError

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch is split over every device
MIN_SHARD_SIZE = 2**12  # elements; smaller arrays are replicated (gathering them costs more than it saves)


def mesh_shape(data: int, fsdp: int, devices: int) -> tuple[int, int]:
    """(data, fsdp) for ``devices`` devices; ``data=0`` takes the devices ``fsdp`` leaves.

    Raises ``ConfigError`` naming ``mesh.data``, ``mesh.fsdp`` and the device count.
    """
    if fsdp < 1:
        raise ConfigError(f"bad value for 'mesh.fsdp': {fsdp} must be at least 1")
    if data < 0:
        raise ConfigError(f"bad value for 'mesh.data': {data} must not be negative (0 takes the devices "
                          "mesh.fsdp leaves)")
    if data == 0:
        if devices % fsdp:
            raise ConfigError(f"mesh.fsdp={fsdp} does not divide the {devices} devices (mesh.data=0 takes the "
                              f"rest); choose mesh.fsdp from {_divisors(devices)}")
        return devices // fsdp, fsdp
    if data * fsdp != devices:
        raise ConfigError(f"mesh.data={data} x mesh.fsdp={fsdp} is {data * fsdp} devices, but there are "
                          f"{devices}; mesh.data * mesh.fsdp must be {devices} (mesh.data=0 takes the rest)")
    return data, fsdp


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def make_mesh(data: int = 0, fsdp: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """The ``('data', 'fsdp')`` mesh of ``devices`` (default: every device of every process).

    One process: ``mesh_utils.create_device_mesh`` (which follows a TPU's physical topology).
    Several processes, each holding whole rows: ``create_hybrid_device_mesh`` with processes as
    the outer granules. Otherwise (``fsdp`` spanning hosts) the devices ordered by process.
    """
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = mesh_shape(data, fsdp, len(devices))
    processes = sorted({d.process_index for d in devices})
    grid = None
    try:
        if len(processes) == 1:
            grid = mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True)
        elif data % len(processes) == 0:
            grid = mesh_utils.create_hybrid_device_mesh((data // len(processes), fsdp), (len(processes), 1),
                                                        devices, process_is_granule=True)
    except (ValueError, NotImplementedError, AssertionError):  # a topology the helpers cannot lay out
        grid = None
    if grid is None:
        grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id))).reshape(data, fsdp)
    return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = MIN_SHARD_SIZE,
              axis: str = "fsdp") -> PartitionSpec:
    """Shard the largest dimension ``fsdp_size`` divides, for arrays of at least ``min_size`` elements.

    Ties go to the first such dimension. Anything smaller, or with no dimension that divides,
    is replicated (``PartitionSpec()``), as is everything when ``fsdp_size`` is 1.
    """
    shape = tuple(int(n) for n in shape)
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    for i in sorted(range(len(shape)), key=lambda i: -shape[i]):  # stable: equal sizes keep their order
        if shape[i] >= fsdp_size and shape[i] % fsdp_size == 0:
            return PartitionSpec(*(None,) * i, axis)
    return PartitionSpec()


def state_shardings(tree: Any, mesh: Mesh, min_size: int = MIN_SHARD_SIZE) -> Any:
    """A ``NamedSharding`` for every leaf of ``tree`` (arrays, ``ShapeDtypeStruct``, scalars) by ``fsdp_spec``.

    The result has the structure of ``tree`` (an ``nnx.State`` stays one), ready for
    ``jax.jit(in_shardings=..., out_shardings=...)`` or ``jax.device_put``. Optimizer state
    mirrors the parameters' shapes, so it is sharded like them.
    """
    size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), size, min_size)), tree)


def batch_axes(mesh: Mesh | None = None) -> str | tuple[str, ...]:
    """The mesh axes a batch is split over: ``data``, and ``fsdp`` too once it has more than one
    device (both, for no mesh in particular)."""
    if mesh is None:
        return BATCH_AXES
    names = tuple(name for name in mesh.axis_names if mesh.shape[name] > 1 or name == "data")
    return names[0] if len(names) == 1 else names


def batch_spec(axis: int = 0, mesh: Mesh | None = None) -> PartitionSpec:
    """Axis ``axis`` (the batch) split over every device of ``mesh`` (``batch_axes``)."""
    return PartitionSpec(*(None,) * axis, batch_axes(mesh))


def batch_sharding(mesh: Mesh, batch: int, axis: int = 0) -> NamedSharding:
    """Split axis ``axis`` (the batch) over every device when it divides the device count; else replicate.

    Split, every device computes its share of each batch and XLA adds the gradients up across
    devices (data parallelism); replicated, every device computes the whole batch. With several
    processes the global batch must divide: a replicated batch would have to be the same on
    every process.
    """
    if batch % mesh.devices.size:
        return replicated(mesh)
    return NamedSharding(mesh, batch_spec(axis, mesh))


def global_batch(local: Any, mesh: Mesh, axis: int = 0) -> Any:
    """One global array per leaf from each process's own rows (``jax.make_array_from_process_local_data``).

    Process p's rows are the p-th block of the global batch (processes lie on the outer mesh
    axis). In one process this is ``jax.device_put`` with ``batch_spec(axis)``.
    """
    sharding = NamedSharding(mesh, batch_spec(axis))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def place(tree: Any, shardings: Any) -> Any:
    """``tree`` (host or single-device arrays, the same on every process) on ``shardings`` (a tree or one).

    One process: ``jax.device_put``. Several: each process builds its own shards from its copy
    (``jax.make_array_from_callback``), so nothing crosses between processes.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(a: Any, s: jax.sharding.Sharding) -> jax.Array:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a if a.sharding == s else jax.device_put(a, s)
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def describe(mesh: Mesh, tree: Any) -> dict[str, Any]:
    """What a report shows of a placement: the mesh, and how many arrays (and elements) are sharded."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if hasattr(leaf, "sharding")]
    sharded = [leaf for leaf in leaves if any(axis is not None for axis in leaf.sharding.spec)]
    return {"mesh": dict(mesh.shape), "processes": len({d.process_index for d in mesh.devices.flat}),
            "sharded_arrays": len(sharded), "arrays": len(leaves),
            "sharded_elements": sum(math.prod(leaf.shape) for leaf in sharded),
            "elements": sum(math.prod(leaf.shape) for leaf in leaves)}


def device_memory() -> dict[str, dict[str, int]] | None:
    """Bytes in use and peak on each of this process's devices, where the backend reports them
    (GPU, TPU); None where it does not (CPU)."""
    stats = {}
    for device in jax.local_devices():
        try:
            memory = device.memory_stats()
        except (NotImplementedError, RuntimeError):
            memory = None
        if not memory:
            return None
        stats[str(device)] = {k: int(memory[k]) for k in ("bytes_in_use", "peak_bytes_in_use") if k in memory}
    return stats
