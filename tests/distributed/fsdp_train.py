"""The pipeline's own TrainState trained on a mesh: ``python -m tests.distributed.fsdp_train STORE FSDP``.

Prepares a small MLP run (EMA on) as ``pipeline train`` does, with ``mesh.fsdp=FSDP`` over every
device of the process (the test forces 8 with ``XLA_FLAGS``), runs its K-step calls through the
run's programs (explicit in and out shardings) and prints one JSON line: the mesh, where the
parameters, Adam moments and EMA of the first layer live, how many times the step compiled,
the collectives of the compiled step (from its HLO text), the per-step losses and the final
evaluation.
"""

from __future__ import annotations

import json
import sys

import numpy as np

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def main(store_root: str, fsdp: int) -> dict:
    from pipeline import distributed

    distributed.initialize()
    import jax

    from pipeline.bench.pipeline_loop import Batches
    from pipeline.config import Config, apply_overrides
    from pipeline.data import Store
    from pipeline.models import MLPConfig
    from pipeline.sharding import describe
    from pipeline.train.prepare import prepare
    from pipeline.train.programs import solo_programs

    base = Config(data="digits", steps=40, batch_size=32, eval_every=20, steps_per_call=10, ema_decay=0.9,
                  model=MLPConfig(hidden=(64,)))
    prep = prepare(apply_overrides(base, [f"mesh.fsdp={fsdp}"]), Store(store_root))
    programs = solo_programs(prep.spec, prep.steps_per_call, False, prep.shardings)
    state = programs.place(prep.state)
    batches = Batches(prep, 0)
    losses, args = [], None
    for _ in range(prep.total_steps // prep.steps_per_call):
        args = batches.args()
        state, metrics = programs.run(state, *args)
        losses.extend(np.asarray(metrics["loss"]).tolist())
    compiles = programs.run._cache_size()  # before the lowering below, which compiles the step again
    # The compiled K-step call as XLA runs it: with the kernel split over fsdp, SPMD partitioning
    # gathers it where the forward and backward passes need it.
    hlo = programs.run.lower(state, *args).compile().as_text()
    test = prep.evals["test"]
    sums = jax.device_get(programs.evaluate(state, test.x, test.y, test.mask))

    def spec(tree) -> list:
        leaf = [a for a in jax.tree.leaves(tree) if a.ndim == 2 and a.shape[0] == a.shape[1]][0]  # the 64 x 64 kernel
        return [list(leaf.sharding.spec), list(leaf.addressable_shards[0].data.shape)]

    adam_states = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
    return {
        "mesh": dict(prep.mesh.shape),
        "params": spec(state.params),
        "adam": [spec(moment) for adam in adam_states for moment in (adam.mu, adam.nu)],
        "ema": spec(state.ema),
        "replicated_step": list(state.step.sharding.spec),
        "compiles": compiles,
        "collectives": sorted(name for name in COLLECTIVES if name in hlo),
        "placement": describe(prep.mesh, state),
        "losses": losses,
        "test_loss_sum": float(sums["loss"]),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))), flush=True)
