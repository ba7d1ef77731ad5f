"""Population-based training (``--strategy pbt``): the exploit copies exact states, explore stays in the
space, one compile for the whole run, a killed sweep resumes bit-equal, bad input is one line."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import apply_overrides
from pipeline.data import Store, ensure_dataset
from pipeline.experiments import load_module
from pipeline.optim import hyperparams
from pipeline.sweep.pbt import PBTOptions, explore, split_pbt_args
from pipeline.sweep.space import parse_space
from pipeline.train.checkpoint import read_checkpoint
from pipeline.train.exploit import hyperparameter_leaves, leaf_paths
from pipeline.train.population import SoloPopulation, VmapPopulation, stack
from pipeline.train.prepare import prepare
from pipeline.train.programs import solo_programs, vmapped_programs
from pipeline.train.session import open_feed
from pipeline.train.state import create_state
from tests.conftest import ROOT
from tests.sweep.conftest import pipeline, read_sweep, sweep

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

# Four members over a learning rate and a dropout rate, exploited at every evaluation.
SPACE = ["optimizer.learning_rate=loguniform(1e-3,1e-1)", "model.dropout=uniform(0.05,0.3)"]
PBT = ["--strategy", "pbt", "--trials", "4", "pbt.interval=20", "model.hidden=16", "batch_size=32",
       "eval_every=20", "--no-progress"]

# Traces of the exploit program (the train and eval programs are counted by the ``traces`` fixture).
EXPLOITS: collections.Counter[str] = collections.Counter()


def _count_exploit(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_trace_duration" and kwargs.get("fun_name") == "population_exploit":
        EXPLOITS["exploit"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_exploit)


# -- the exploit, against numpy --------------------------------------------------------------------
KEYS = ["optimizer.learning_rate", "model.dropout", "label_smoothing"]


def _population(home: Path, vmap: bool):
    """Four members of different seeds (so different data orders) and hyperparameters, trained 8 steps."""
    base = apply_overrides(load_module("digits_mlp").config(),
                           ["model.hidden=16", "batch_size=32", "steps=40", "model.dropout=0.1",
                            "label_smoothing=0.1"])
    cfgs = [apply_overrides(base, [f"seed={i}", f"optimizer.learning_rate={0.01 * (i + 1)}",
                                   f"model.dropout={0.1 + 0.05 * i}", f"label_smoothing={0.05 * (i + 1)}"])
            for i in range(4)]
    prep = prepare(cfgs[0], Store(home / "data"), steps_per_call=4)
    states = [create_state(c, prep.info, 40)[1] for c in cfgs]
    feed = open_feed(prep, 0, [c.resolved_data_seed for c in cfgs], 4, own_reader=False)
    live = np.ones(4, bool)
    if vmap:
        pop = VmapPopulation(vmapped_programs(prep.spec, 4), stack(states), live, feed, 0)
    else:
        pop = SoloPopulation(solo_programs(prep.spec, 4), states, live, feed, 0)
    for _ in range(2):
        pop.fetch(pop.step())
    return pop, hyperparameter_leaves(states[0], cfgs[0], prep.info, KEYS)


@pytest.mark.parametrize("vmap", [True, False], ids=["vmap", "no-vmap"])
def test_exploit_copies_the_exact_state_of_its_parent(home, vmap):
    pop, leaves = _population(home, vmap)
    assert all(leaves[k] for k in KEYS)  # each key has its home in the state
    before = jax.device_get(pop.states())
    parents = np.array([2, 0, 3, 1])  # a fixed permutation: every member copies another
    new = {"optimizer.learning_rate": [0.5, 0.25, 0.125, 0.0625], "model.dropout": [0.2, 0.21, 0.22, 0.23],
           "label_smoothing": [0.3, 0.31, 0.32, 0.33]}
    hparams = {i: np.asarray(new[k]) for k in KEYS for i in leaves[k]}
    pop.exploit(parents, hparams)
    after = jax.device_get(pop.states())

    # The numpy reference: every leaf gathered by parents, then the hyperparameter leaves written.
    want = [np.asarray(a)[parents] for a in jax.tree.leaves(before)]
    for i, values in hparams.items():
        want[i] = np.broadcast_to(np.asarray(values, want[i].dtype).reshape((4,) + (1,) * (want[i].ndim - 1)),
                                  want[i].shape)
    got = jax.tree.leaves(after)
    paths = leaf_paths(after)
    assert {p[0] for p in paths} >= {"params", "rest", "opt_state", "step", "hparams"}
    for path, g, w in zip(paths, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, path
        np.testing.assert_array_equal(g, w, err_msg=str(path))
    # The values landed where the step reads them.
    np.testing.assert_array_equal(hyperparams(after.opt_state)["learning_rate"],
                                  np.float32(new["optimizer.learning_rate"]))
    np.testing.assert_array_equal(after.hparams["label_smoothing"], np.float32(new["label_smoothing"]))
    rates = [a for p, a in zip(paths, got) if p[0] == "rest" and p[-1] == "value" and "rate" in p]
    assert rates and all(np.array_equal(a, np.float32(new["model.dropout"])) for a in rates)
    # Each member now reads its parent's data order.
    np.testing.assert_array_equal(pop.feed.which, parents)
    assert pop.feed.seeds == [2, 0, 3, 1]
    if vmap:
        np.testing.assert_array_equal(np.asarray(pop.which), parents)
    pop.fetch(pop.step())  # and trains on from there


def test_solo_and_vmapped_exploits_agree(home):
    results = []
    for vmap in (True, False):
        pop, leaves = _population(home, vmap)
        hparams = {i: np.asarray([0.5, 0.25, 0.125, 0.0625]) for i in leaves["optimizer.learning_rate"]}
        pop.exploit(np.array([0, 0, 3, 3]), hparams)
        results.append(jax.device_get(pop.states()))
    for a, b in zip(*(jax.tree.leaves(r) for r in results), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the solo and vmapped steps round alike


# -- explore ---------------------------------------------------------------------------------------
def test_explore_stays_inside_the_space():
    base = load_module("digits_mlp").config()
    space = parse_space(base, ["optimizer.learning_rate=loguniform(1e-4,1e-1)", "optimizer.b1=uniform(0.8,0.95)",
                               "optimizer.momentum=choice(0.5;0.9;0.99)", "model.dropout=linspace(0,0.4,5)",
                               "seed=range(3,7)"])
    dims = {d.key: d for d in space.dimensions}
    rng = np.random.default_rng(0)
    opts = PBTOptions(20, 0.25, (0.5, 2.0), 0.3)
    for key, dim in dims.items():
        on = True if key == "model.dropout" else None  # a switch that is on never reaches 0
        value = dim.sample(rng) if not (on and dim.values[0] == 0) else 0.1
        seen = set()
        for _ in range(300):
            value = explore(value, dim, on, opts, rng)
            seen.add(value)
            if dim.finite:
                assert value in dim.values, (key, value)
            else:
                assert dim.low <= value <= dim.high, (key, value)
        if on:
            assert min(seen) > 0
        assert len(seen) > 2, key  # it does move
    # A finite key steps to a neighbouring value when perturbed (never resampled here).
    momentum = dims["optimizer.momentum"]
    never = PBTOptions(20, 0.25, (2.0,), 0.0)
    assert explore(0.5, momentum, None, never, rng) == 0.9
    assert explore(0.99, momentum, None, never, rng) == 0.99  # the last value stays


def test_pbt_options_parse_and_strip():
    opts, rest = split_pbt_args(["pbt.interval=40", "optimizer.learning_rate=loguniform(1e-3,1e-1)",
                                 "pbt.perturb=0.5,2", "pbt.resample=0", "pbt.quantile=0.5"])
    assert opts == PBTOptions(40, 0.5, (0.5, 2.0), 0.0)
    assert rest == ["optimizer.learning_rate=loguniform(1e-3,1e-1)"]
    assert split_pbt_args([])[0] == PBTOptions(None, 0.25, (0.8, 1.25), 0.25)


# -- a whole run -----------------------------------------------------------------------------------
def test_one_compile_over_five_intervals_and_the_lineage(home, traces):
    EXPLOITS.clear()
    s = sweep("digits_mlp", *SPACE, *PBT, "steps=120")
    assert traces == {"train": 1, "eval": 1}  # val and test share one batch shape (prepare pads them alike)
    assert EXPLOITS == {"exploit": 1}
    lineage = pq.read_table(s.folder / "pbt.parquet").to_pylist()
    assert sorted({r["step"] for r in lineage}) == [0, 20, 40, 60, 80, 100]  # five intervals after step 0
    assert all(len([r for r in lineage if r["step"] == step]) == 4 for step in (0, 20, 40, 60, 80, 100))
    copied = [r for r in lineage if r["parent"] != r["trial"]]
    assert len(copied) == 5  # one of four members (the bottom quarter) at each interval
    # One population: no gaps between populations; the exploits are the search's time at boundaries.
    assert s.summary["timing"]["between_populations_s"] == 0 and s.summary["timing"]["at_boundaries_s"] > 0
    for r in lineage:
        assert 1e-3 <= r["optimizer.learning_rate"] <= 1e-1 and 0.05 <= r["model.dropout"] <= 0.3
    # trials.parquet keeps each member's final hyperparameters: its last row of the lineage.
    last = {r["trial"]: r for r in lineage if r["step"] == 100}
    for row in s.trials:
        assert row["optimizer.learning_rate"] == last[row["trial"]]["optimizer.learning_rate"]
        assert row["model.dropout"] == last[row["trial"]]["model.dropout"]
        assert row["status"] == "done" and row["steps"] == 120
    # An exported member: its final state, and its hyperparameter history beside it and in the summary.
    child = copied[-1]["trial"]
    out = s.folder.parent / f"exported-{child}"
    r = pipeline("sweep", "export", str(s.folder), "--trial", str(child), "--run-dir", str(out))
    assert r.code == 0, r.err
    history = pq.read_table(out / "pbt_history.parquet").to_pylist()
    assert history == [row for row in lineage if row["trial"] == child]
    summary = json.loads((out / "summary.json").read_text())
    assert [h["step"] for h in summary["pbt_history"]] == [0, 20, 40, 60, 80, 100]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["optimizer"]["learning_rate"] == last[child]["optimizer.learning_rate"]
    shown = pipeline("runs", "show", str(out))
    assert shown.code == 0 and f"pbt          step 100 from trial {last[child]['parent']}" in shown.out


# -- resume ----------------------------------------------------------------------------------------
RESUMED = [*SPACE, *PBT, "steps=1000", "checkpoint_every=20", "--vmap"]


def _checkpoint_step(folder: Path) -> int:
    return max([0] + [int(p.name) for p in folder.glob("checkpoints/g*-c*/*") if p.name.isdigit()])


def test_sigkilled_pbt_sweep_resumes_bit_equal(home):
    reference = sweep("digits_mlp", *RESUMED)
    folder = home / "pbt-killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sweep", "digits_mlp", *RESUMED, "--sweep-dir",
                             str(folder)], cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _checkpoint_step(folder) <= 200:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert 200 < _checkpoint_step(folder) < 1000

    r = pipeline("sweep", "digits_mlp", *RESUMED, "--sweep-dir", str(folder))
    assert r.code == 0, r.err
    resumed = read_sweep(folder)
    for a, b in zip(resumed.trials, reference.trials, strict=True):
        a.pop("wall_s"), b.pop("wall_s")
        assert a == b
    for name in ("pbt.parquet", "curves.parquet"):
        got, want = pq.read_table(folder / name), pq.read_table(reference.folder / name)
        assert got.equals(want), name
    cfg = apply_overrides(load_module("digits_mlp").config(), resumed.trials[0]["overrides"])
    state = create_state(cfg, ensure_dataset(Store(home / "data"), "digits"), 1000)[1]

    def like(meta: dict):
        return stack([state] * len(meta["slots"]))

    (a, meta_a), (b, meta_b) = (read_checkpoint(f / "checkpoints" / "g0-c0", like) for f in (folder, reference.folder))
    assert meta_a["step"] == meta_b["step"] == 1000
    assert meta_a["search"] == meta_b["search"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# -- bad input: one line each, through the CLI, nothing written --------------------------------------
@pytest.mark.parametrize("args, message", [
    (["pbt.interval=30"], "bad value for 'pbt.interval': 30 must be an evaluation step (a multiple of eval_every=20)"),
    (["model.hidden=choice(8;16)"], "PBT over a key that is not traced: 'model.hidden'"),
    (["--max-population", "2"], "PBT trains its 4 trials as one population, but --max-population 2 holds at most 2"),
    (["pbt.quantile=0.9"], "bad value for 'pbt.quantile': 0.9 must be above 0 and at most 0.5"),
    (["pbt.perturb=0.8,x"], "bad value for 'pbt.perturb'"),
    (["pbt.speed=2"], "unknown PBT setting 'pbt.speed'"),
], ids=["interval", "not-traced", "too-big", "quantile", "perturb", "unknown"])
def test_bad_pbt_input_is_one_line(cli, workdir, args, message):
    folder = workdir / "sweep"
    r = cli("sweep", "digits_mlp", *SPACE, *PBT, "steps=100", *args, "--sweep-dir", str(folder))
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert not folder.exists()
