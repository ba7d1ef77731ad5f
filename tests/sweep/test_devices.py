"""Populations on several devices: members split over them, each member's result unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.data import Store, ensure_dataset

# A population of ``P`` members stepped twice, vmapped and one member at a time; prints both.
SCRIPT = """
import json, sys
import jax, numpy as np
from pipeline.config import Config, apply_overrides
from pipeline.data import Store
from pipeline.train.feeds import ResidentFeed
from pipeline.train.population import SoloPopulation, VmapPopulation, stack
from pipeline.train.programs import solo_programs, vmapped_programs
from pipeline.train.prepare import prepare
from pipeline.train.state import create_state
from pipeline.models import MLPConfig

members = int(sys.argv[2])
base = Config(data="digits", steps=20, batch_size=16, eval_every=10, model=MLPConfig(hidden=(8,)))
prep = prepare(base, Store(sys.argv[1]))
cfgs = [apply_overrides(base, [f"optimizer.learning_rate={1e-3 * (1 + i)}", f"seed={i % 2}"]) for i in range(members)]
states = [create_state(c, prep.info, prep.total_steps)[1] for c in cfgs]
seeds = [c.resolved_data_seed for c in cfgs]
k = prep.steps_per_call
out = {"devices": jax.device_count()}
def feed():
    return ResidentFeed(seeds, prep.train, 16, prep.mesh, 2)


for name, make in (("vmap", lambda: VmapPopulation(vmapped_programs(prep.spec, k), stack(states),
                                                   np.ones(members, bool), feed(), 0)),
                   ("solo", lambda: SoloPopulation(solo_programs(prep.spec, k), states, np.ones(members, bool),
                                                   feed(), 0))):
    pop = make()
    losses = [pop.fetch(pop.step())["loss"] for _ in range(2)]
    out[name] = np.concatenate(losses, axis=1).tolist()
    if name == "vmap":
        out["member_sharding"] = list(jax.tree.leaves(pop.state.params)[0].sharding.spec)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


def run_population(store: Store, members: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store.root), str(members)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("members, split", [(4, True), (3, False)])
def test_members_split_over_two_devices_train_as_they_do_alone(store, members, split):
    out = run_population(store, members)
    assert out["devices"] == 2
    # An even population puts half its members on each device; an odd one is replicated (each
    # member's batch is split instead).
    assert out["member_sharding"] == (["data"] if split else [])
    np.testing.assert_allclose(out["vmap"], out["solo"], rtol=1e-5)
