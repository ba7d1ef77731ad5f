"""Three SGD-with-momentum steps of a small MLP, sharded by ``pipeline.sharding``'s rules and unsharded.

Run in a subprocess whose devices the test chooses (``XLA_FLAGS`` for one process of 8, or
``pipeline launch`` for several): ``python -m tests.distributed.sharded_step DATA FSDP``. Prints
one JSON line: the mesh, each parameter's partition spec and shard shape, and how far the sharded
parameters are from the unsharded ones. Each process feeds only its own rows of the batch.
"""

from __future__ import annotations

import json
import sys

import numpy as np

SHAPES = {"w1": (64, 256), "b1": (256,), "w2": (256, 16), "b2": (16,)}
BATCH = 32
STEPS = 3


def init_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32) for name, shape in SHAPES.items()}


def main(data: int, fsdp: int) -> dict:
    from pipeline import distributed

    distributed.initialize()
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import NamedSharding

    from pipeline import sharding

    tx = optax.sgd(0.1, momentum=0.9)

    def loss(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        logits = h @ params["w2"] + params["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(state, x, y):
        params, opt_state = state
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(1)
    xs = rng.normal(size=(STEPS, BATCH, 64)).astype(np.float32)
    ys = rng.integers(0, 16, size=(STEPS, BATCH)).astype(np.int32)
    params = init_params()
    state = (params, tx.init(params))

    # Unsharded: one device of this process, the whole batch.
    plain = jax.jit(step)
    ref = jax.device_put(state, jax.local_devices()[0])
    for x, y in zip(xs, ys):
        ref = plain(ref, x, y)
    ref_params = jax.tree.map(np.asarray, ref[0])

    # Sharded: parameters and optimizer state by the fsdp rule, the batch over every device.
    mesh = sharding.make_mesh(data, fsdp)
    shardings = sharding.state_shardings(jax.eval_shape(lambda: state), mesh)
    batch = NamedSharding(mesh, sharding.batch_spec())
    sharded = jax.jit(step, in_shardings=(shardings, batch, batch), out_shardings=shardings, donate_argnums=0)
    placed = jax.tree.map(lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx]), state, shardings)
    rows = BATCH // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    for x, y in zip(xs, ys):
        placed = sharded(placed, *sharding.global_batch((x[mine], y[mine]), mesh))
    out_params, out_opt = placed
    gathered = jax.jit(lambda t: t, out_shardings=sharding.replicated(mesh))(out_params)
    return {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "mesh": dict(mesh.shape),
        "mesh_processes": [[d.process_index for d in row] for row in mesh.devices],
        "specs": {k: list(v.sharding.spec) for k, v in out_params.items()},
        "momentum_specs": {k: list(v.sharding.spec) for k, v in out_opt[0].trace.items()},
        "shard_shapes": {k: list(v.addressable_shards[0].data.shape) for k, v in out_params.items()},
        "max_diff": max(float(np.max(np.abs(np.asarray(gathered[k]) - ref_params[k]))) for k in SHAPES),
        "moved": max(float(np.max(np.abs(ref_params[k] - params[k]))) for k in SHAPES),
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))), flush=True)
