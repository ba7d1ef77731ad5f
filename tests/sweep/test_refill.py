"""Refill: a stopped member's slot takes the next trial (fresh state, its own steps and batches); ASHA.

These drive ``pipeline.sweep.refill`` as the runner does for ``pipeline sweep --refill``: the trials
and groups planned by ``resolve_sweep``, one refill population per group, records in a sweep folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import Store
from pipeline.errors import PipelineError
from pipeline.sweep import records
from pipeline.sweep.refill import RefillPopulation, run_refill_group
from pipeline.sweep.runner import SweepOptions, resolve_sweep
from pipeline.train.engine import Interrupted
from pipeline.train.evaluation import Bookkeeping
from pipeline.train.prepare import prepare
from pipeline.train.state import create_state
from tests.sweep.conftest import TRACES, pipeline

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

BASE = ["model.hidden=16", "steps=40", "eval_every=20", "batch_size=32", "steps_per_call=10"]
# Random learning rates, seeds and data seeds: every refilled trial brings its own state and batch order.
SPACE = ["optimizer.learning_rate=loguniform(1e-3,3e-2)", "seed=range(100)", "data_seed=range(3)"]


class Sweep:
    """A refill sweep of ``trials`` random trials through populations of ``size`` slots, in ``folder``."""

    def __init__(self, folder: Path, trials: int, size: int, *args: str, rungs: tuple[int, ...] = (),
                 keep: float = 0.5, vmap: bool = True):
        self.opts = SweepOptions(strategy="random", trials=trials, search_seed=3, rungs=rungs, keep=keep,
                                 vmap=vmap, show_progress=False)
        self.store = Store()
        self.plan = resolve_sweep("digits_mlp", [*BASE, *SPACE, *args], self.store, self.opts)
        assert len(self.plan.groups) == 1
        self.group = self.plan.groups[0]
        self.group.chunks = [self.group.trials[i:i + size] for i in range(0, len(self.group.trials), size)]
        self.trials = self.plan.trials
        self.folder = folder
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.recs = {t.id: Bookkeeping() for t in self.trials}
        self.prep = prepare(self.trials[0].cfg, self.store, steps_per_call=self.group.steps_per_call)

    def write_trials(self) -> None:
        records.write_parquet(records.trials_table(self.trials, self.recs, self.plan.swept),
                              self.folder / "trials.parquet")

    def population(self, stop: dict | None = None) -> RefillPopulation:
        return RefillPopulation(self.group, self.prep, self.trials, self.recs, self.folder, len(self.group.chunks[0]),
                                True, self.opts.rungs, self.opts.keep, stop or {"set": False}, self.write_trials,
                                lambda n, loss: None)

    def run(self, stop: dict | None = None, plans: dict | None = None) -> None:
        run_refill_group(self.group, self.prep, self.trials, self.recs, self.folder, self.opts,
                         {} if plans is None else plans, stop or {"set": False}, self.write_trials,
                         lambda n, loss: None)

    def table(self) -> dict[int, dict]:
        return {row["trial"]: row for row in pq.read_table(self.folder / "trials.parquet").to_pylist()}

    def curves(self) -> list[tuple]:
        t = pq.read_table(self.folder / "curves.parquet").to_pydict()
        return sorted(zip(t["trial"], t["split"], t["name"], t["step"], t["value"], strict=True))

    def curve(self, trial: int, split: str = "train", name: str = "loss") -> tuple[np.ndarray, np.ndarray]:
        rows = [(s, v) for t, sp, n, s, v in self.curves() if (t, sp, n) == (trial, split, name)]
        return np.array([s for s, _ in rows]), np.array([v for _, v in rows])


@pytest.fixture(scope="module")
def refilled(home):
    """6 trials through 2 slots: every slot turns over twice (at global steps 40 and 80)."""
    s = Sweep(home / "refilled", 6, 2)
    TRACES.clear()
    s.run()
    s.traces = dict(TRACES)
    return s


def test_a_refilled_slot_starts_bit_equal_to_its_trial_alone(home):
    s = Sweep(home / "initial", 4, 2)
    population = s.population()
    population.engine.execute(max_calls=4)  # 40 steps: trials 0 and 1 end, their slots take 2 and 3
    engine = population.engine
    assert engine.slots == s.group.trials[2:4] and list(engine.offsets) == [40, 40] and engine.live.all()
    stacked = jax.device_get(population.engine.pop.states())
    for slot, trial in enumerate(engine.slots):
        _, alone = create_state(s.trials[trial].cfg, s.prep.info, s.group.total_steps)
        got, want = jax.tree.leaves(jax.tree.map(lambda a, slot=slot: a[slot], stacked)), jax.tree.leaves(alone)
        assert len(got) == len(want)
        for a, b in zip(got, jax.device_get(want), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    engine.execute()
    population.session.close()
    population.session.close_hooks()


def test_every_trial_of_the_budget_is_recorded_at_its_own_steps(refilled):
    table = refilled.table()
    assert sorted(table) == list(range(6))
    for trial, row in table.items():
        assert (row["status"], row["steps"], row["stopped_at"]) == ("done", 40, None), trial
        steps, _ = refilled.curve(trial)
        np.testing.assert_array_equal(steps, np.arange(1, 41))  # the member's own steps, from 1
        assert list(refilled.curve(trial, "test", "accuracy")[0]) == [20, 40]
        assert row["final_test_accuracy"] == refilled.curve(trial, "test", "accuracy")[1][-1]


def test_one_compile_for_every_turnover(refilled):
    # One train program for every turnover; one evaluation program per evaluated split (val, test).
    assert refilled.traces == {"train": 1, "eval": 1}  # val and test share one batch shape


def test_a_refilled_trial_trains_like_its_pipeline_train(refilled, home):
    for trial in (1, 5):  # a first member, and one that took its slot at global step 80
        overrides = refilled.trials[trial].overrides
        folder = home / f"run-{trial}"
        r = pipeline("train", "digits_mlp", *BASE, *overrides, "--run-dir", str(folder), "--no-progress")
        assert r.code == 0, r.err
        t = pq.read_table(folder / "metrics.parquet").to_pydict()
        want = sorted(zip(t["split"], t["name"], t["step"], t["value"], strict=True))
        got = [row[1:] for row in refilled.curves() if row[0] == trial]
        assert [w[:3] for w in want] == [g[:3] for g in got]
        np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-5, atol=1e-6)


def test_members_one_at_a_time_turn_over_alike(refilled, home):
    s = Sweep(home / "sequential", 6, 2, vmap=False)
    plans: dict = {}
    s.run(plans=plans)
    assert plans == {"0": {"plan": "sequential", "forced": True, "refill": True}}
    got, want = s.table(), refilled.table()
    for t in want:
        assert (got[t]["status"], got[t]["steps"]) == (want[t]["status"], want[t]["steps"])
        np.testing.assert_allclose(got[t]["final_test_loss"], want[t]["final_test_loss"], rtol=1e-5)
    assert [r[:4] for r in s.curves()] == [r[:4] for r in refilled.curves()]


def test_asha_promotes_and_stops_each_member_at_its_own_rung(home):
    s = Sweep(home / "asha", 8, 3, "steps=60", rungs=(20,), keep=0.5)
    TRACES.clear()
    population = s.population()
    population.execute()
    assert dict(TRACES) == {"train": 1, "eval": 1}  # val and test share one batch shape
    entered = population.engine.refill.entered
    assert sorted(entered) == list(range(8))
    split, metric, higher = s.prep.selection.split, s.prep.selection.metric, s.prep.selection.higher
    status = {t: (r.status, r.stopped_at, r.steps) for t, r in s.recs.items()}

    def badness(trial: int) -> float:
        rows = [r for r in population.session.metrics.table().to_pylist()
                if (r["trial"], r["split"], r["name"], r["step"]) == (trial, split, metric, 20)]
        value = rows[0]["value"]
        return math.inf if math.isnan(value) else (-value if higher else value)

    # The rule, replayed: members reaching rung 20 at the same global step are recorded together, then
    # each is kept when it ranks in the top ceil(n/2) of all recorded at the rung so far.
    seen: dict[int, float] = {}
    kept = {}
    for arrival in sorted({entered[t] + 20 for t in entered}):
        cohort = [t for t in entered if entered[t] + 20 == arrival]
        seen.update({t: badness(t) for t in cohort})
        ranked = sorted(seen, key=lambda t: (seen[t], t))[:max(1, math.ceil(len(seen) * 0.5))]
        kept.update({t: t in ranked for t in cohort})
    assert any(kept.values()) and not all(kept.values())
    assert len({entered[t] for t in entered}) > 2  # trials entered at several steps: asynchronous
    for t, promoted in kept.items():
        assert status[t] == (("done", None, 60) if promoted else ("stopped", 20, 20)), t
    # The first cohort (3 members at once) is halved as synchronous halving would: 2 of 3 go on.
    assert sum(kept[t] for t in entered if entered[t] == 0) == 2


def test_an_interrupted_refill_sweep_resumes_exactly(refilled, home):
    s = Sweep(home / "resumed", 6, 2)
    calls = [0]
    stop = {"set": False}

    def count(n: int, loss: float) -> None:
        calls[0] += 1
        stop["set"] = calls[0] == 5  # mid-way between evaluations, after the first turnover

    population = s.population(stop)
    population.engine.events = type(population.engine.events)(on_progress=lambda last, n, loss: count(n, loss))
    with pytest.raises(Interrupted):
        population.execute()
    assert 40 < population.engine.step < 120
    assert {r.status for r in s.recs.values()} >= {"done", "running"}
    fresh = Sweep(home / "resumed", 6, 2)  # a new process's view: records from the table
    fresh.recs.update(records.read_records(home / "resumed" / "trials.parquet"))
    fresh.run()
    got, want = fresh.table(), refilled.table()
    for t in want:
        got[t].pop("wall_s"), want[t].pop("wall_s")
        assert got[t] == want[t], t
    assert fresh.curves() == refilled.curves()  # no row lost or doubled, every value the same


def test_a_streamed_dataset_is_refused_in_one_line(home):
    with pytest.raises(PipelineError, match="streamed from disk.*--refill"):
        Sweep(home / "streamed", 2, 2, "data.max_device_bytes=100000", "selection.split=test").population()
