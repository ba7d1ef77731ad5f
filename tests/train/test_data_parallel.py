"""Data parallelism: on several devices each computes its share of every batch, with the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.data import Store, ensure_dataset

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}

# Two calls of K steps through the loop's own pieces; prints what the test compares.
SCRIPT = """
import json, sys
import jax, numpy as np
from pipeline.config import Config
from pipeline.data import Store
from pipeline.bench.pipeline_loop import Batches
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs
from pipeline.models import MLPConfig

cfg = Config(data="digits", steps=20, batch_size=16, eval_every=10, model=MLPConfig(hidden=(8,)))
prep = prepare(cfg, Store(sys.argv[1]))
_programs = solo_programs(prep.spec, 0)
run, evaluate = _programs.run, _programs.evaluate
batches = Batches(prep, 0)
first = batches.args()
program = run.lower(prep.state, *first).compile().as_text()
state, m1 = run(prep.state, *first)
state, m2 = run(state, *batches.args())
b = prep.evals["test"]
test = evaluate(state, b.x, b.y, b.mask)
print(json.dumps({
    "devices": jax.device_count(),
    "index_sharding": list(first[2].sharding.spec),
    "all_reduce": "all-reduce" in program,
    "losses": np.concatenate([np.asarray(m1["loss"]), np.asarray(m2["loss"])]).tolist(),
    "test_loss_sum": float(test["loss"]),
}))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("store"))
    ensure_dataset(store, "digits")
    return store


def run_on(devices_env: dict[str, str], store: Store) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store.root)], capture_output=True, text=True,
                          env={**env, "JAX_PLATFORMS": "cpu", **devices_env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_devices_split_each_batch_and_train_as_one(store):
    one, two = run_on({}, store), run_on(TWO_DEVICES, store)
    assert one["devices"] == 1 and two["devices"] == 2
    # The (K, batch) row indices are split along the batch, so is every gathered batch, and the
    # gradients are summed across the devices inside the program.
    assert two["index_sharding"] == [None, "data"]
    assert two["all_reduce"] and not one["all_reduce"]
    # The same training, up to the order of float32 additions.
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert two["test_loss_sum"] == pytest.approx(one["test_loss_sum"], rel=1e-5)
