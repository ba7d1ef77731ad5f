"""The mesh and the fsdp rule: specs by shape, mesh sizes and their errors, and a sharded SGD step on 8 devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pipeline.config import Config, ConfigError, MeshConfig, apply_overrides, from_dict, to_dict
from pipeline.sharding import batch_sharding, batch_spec, fsdp_spec, make_mesh, mesh_shape, state_shardings
from tests.conftest import ROOT


@pytest.mark.parametrize("shape, size, spec", [
    ((64, 256), 4, P(None, "fsdp")),  # the largest dimension
    ((256, 16), 4, P("fsdp")),
    ((256, 256), 4, P("fsdp")),  # a tie goes to the first
    ((4096,), 4, P("fsdp")),
    ((1000, 7), 4, P("fsdp")),
    ((6, 1000), 8, P(None, "fsdp")),
    ((1002, 8), 4, P(None, "fsdp")),  # 1002 does not divide by 4: the next largest that does
    ((3, 2050), 4, P()),  # no dimension divides
    ((2, 2, 1024), 4, P(None, None, "fsdp")),
    ((4095,), 5, P()),  # under 2**12 elements: replicated
    ((64, 63), 4, P()),
    ((256, 10), 2, P()),  # 2560 elements
    ((), 4, P()),
    ((0, 4096), 4, P()),
    ((64, 256), 1, P()),  # fsdp=1 replicates everything
    ((2, 4096), 4096, P(None, "fsdp")),
    ((2, 4096), 8192, P()),  # no dimension is as large as the axis
])
def test_fsdp_spec_shards_the_largest_dimension_that_divides(shape, size, spec):
    assert fsdp_spec(shape, size) == spec


def test_fsdp_spec_threshold_and_axis_name():
    assert fsdp_spec((16, 16), 4) == P()
    assert fsdp_spec((16, 16), 4, min_size=256) == P("fsdp")
    assert fsdp_spec((16, 16), 4, min_size=257) == P()
    assert fsdp_spec((8, 32), 4, min_size=0, axis="model") == P(None, "model")


@pytest.mark.parametrize("data, fsdp, devices, shape", [
    (0, 1, 1, (1, 1)), (0, 1, 8, (8, 1)), (0, 4, 8, (2, 4)), (2, 4, 8, (2, 4)), (1, 8, 8, (1, 8)), (8, 1, 8, (8, 1)),
])
def test_mesh_shape(data, fsdp, devices, shape):
    assert mesh_shape(data, fsdp, devices) == shape


@pytest.mark.parametrize("data, fsdp, devices, message", [
    (3, 2, 8, "mesh.data=3 x mesh.fsdp=2 is 6 devices, but there are 8; mesh.data * mesh.fsdp must be 8 "
              "(mesh.data=0 takes the rest)"),
    (0, 3, 8, "mesh.fsdp=3 does not divide the 8 devices (mesh.data=0 takes the rest); choose mesh.fsdp from "
              "1, 2, 4, 8"),
    (2, 1, 1, "mesh.data=2 x mesh.fsdp=1 is 2 devices, but there are 1;"),
    (0, 0, 8, "bad value for 'mesh.fsdp': 0 must be at least 1"),
    (-1, 1, 8, "bad value for 'mesh.data': -1 must not be negative"),
])
def test_mesh_shape_errors_name_both_keys_and_the_device_count(data, fsdp, devices, message):
    with pytest.raises(ConfigError) as err:
        mesh_shape(data, fsdp, devices)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_mesh_keys_in_the_config():
    cfg = Config()
    assert (cfg.mesh.data, cfg.mesh.fsdp) == (0, 1)  # every device on `data`: today's data parallelism
    cfg = apply_overrides(cfg, ["mesh.data=2", "mesh.fsdp=4"])
    assert cfg.mesh == MeshConfig(data=2, fsdp=4)
    assert from_dict(Config, to_dict(cfg)).mesh == cfg.mesh
    saved = to_dict(Config())
    del saved["mesh"]  # a run recorded before the mesh keys
    assert from_dict(Config, saved).mesh == MeshConfig()
    for override, message in [("mesh.fsdp=0", "bad value for 'mesh.fsdp': 0 must be at least 1"),
                              ("mesh.data=-2", "bad value for 'mesh.data': -2 must not be negative"),
                              ("mesh.fsdp=1.5", "bad value for 'mesh.fsdp': '1.5' is not an integer"),
                              ("mesh.dat=2", "unknown config key 'mesh.dat'; did you mean mesh.data")]:
        with pytest.raises(ConfigError) as err:
            apply_overrides(Config(), [override])
        assert str(err.value).startswith(message), str(err.value)


def test_one_device_is_a_mesh_of_one_and_everything_is_replicated():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
    tree = {"w": jax.ShapeDtypeStruct((64, 256), np.float32), "n": 3, "s": np.zeros(())}
    assert all(s.spec == P() for s in jax.tree.leaves(state_shardings(tree, mesh)))
    assert batch_spec() == P(("data", "fsdp")) and batch_spec(1) == P(None, ("data", "fsdp"))
    assert batch_sharding(mesh, 16).spec == P("data")  # fsdp is 1: the batch splits over data alone
    with pytest.raises(ConfigError, match="mesh.data=2 x mesh.fsdp=2 is 4 devices"):
        make_mesh(2, 2, devices=jax.devices()[:1])


def run_eight_devices(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_COORDINATOR", "JAX_COORDINATOR"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.sharded_step", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_sgd_step_on_a_2x4_mesh_equals_the_unsharded_step():
    out = run_eight_devices("2", "4")
    assert out["mesh"] == {"data": 2, "fsdp": 4}
    # (a) Sharded where the rule says: w1 (64, 256) on its 256, w2 (256, 16) on its 256; the biases
    # (under 2**12 elements) replicated. The momentum follows its parameter.
    expected = {"w1": [None, "fsdp"], "w2": ["fsdp"], "b1": [], "b2": []}
    assert out["specs"] == expected and out["momentum_specs"] == expected
    assert out["shard_shapes"] == {"w1": [64, 64], "w2": [64, 16], "b1": [256], "b2": [16]}
    # (b) Three steps of SGD with momentum, batch split over all 8 devices: the same parameters.
    assert out["moved"] > 1e-2  # the steps did change the parameters
    assert out["max_diff"] < 1e-6
