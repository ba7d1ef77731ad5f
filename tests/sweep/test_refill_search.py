"""``--refill`` with an Optuna search: one population whose freed slots ask the study one trial at a time.

Every trial of the budget is asked, trained (entering its slot in exactly its ``create_state``) and
told as it ends; the pruner and ASHA rungs stop members; a stopped sweep resumes to the
uninterrupted one; a space that would need a second compiled program is refused in one line.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import apply_overrides
from pipeline.data import Store
from pipeline.errors import PipelineError
from pipeline.experiments import load_module
from pipeline.hooks import Hook
from pipeline.sweep import rounds
from pipeline.sweep.optuna_search import JOURNAL, STUDY, OptunaSearch
from pipeline.sweep.python import sweep as python_sweep
from pipeline.sweep.refill import RefillPopulation
from pipeline.sweep.runner import SweepOptions, resolve_sweep
from pipeline.sweep.search_source import SearchSource
from pipeline.train.prepare import prepare
from pipeline.train.state import create_state
from tests.sweep.conftest import TRACES, read_sweep, sweep

optuna = pytest.importorskip("optuna")  # the optuna extra (CI installs it)

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

SPACE = {"optimizer.learning_rate": "loguniform(1e-3,1e-1)", "seed": "range(100)"}
FIXED = ["model.hidden=16", "steps=40", "eval_every=10", "batch_size=32", "checkpoint_every=10"]
OPTIONS = ["--strategy", "tpe", "--trials", "6", "--max-population", "2", "--refill", "--vmap", "--no-progress"]
ARGS = [f"{k}={v}" for k, v in SPACE.items()] + FIXED + OPTIONS


def study(folder):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / JOURNAL)))
    return optuna.load_study(study_name=STUDY, storage=storage)


def journal(folder) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs) for t in study(folder).trials]


def without_wall(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def assert_told_as_recorded(swept) -> None:
    """Every trial of the table is in the study with the state and value its record says."""
    trials = study(swept.folder).trials
    assert [t.number for t in trials] == [row["trial"] for row in swept.trials]
    state = optuna.trial.TrialState
    for t, row in zip(trials, swept.trials, strict=True):
        assert t.params == {k: row[k] for k in SPACE}
        if row["status"] in ("pruned", "stopped"):
            assert t.state == state.PRUNED and max(t.intermediate_values) == row["stopped_at"], row
        else:
            assert t.state == state.COMPLETE and t.value == row["best_val_accuracy"], row
            assert t.intermediate_values[row["best_step"]] == row["best_val_accuracy"]


@pytest.fixture(scope="module")
def searched(home):
    """6 TPE trials through 2 slots, and the traces of the population programs over the whole sweep."""
    jax.clear_caches()  # programs another test of this process traced would not be traced again
    TRACES.clear()
    swept = sweep("digits_mlp", *ARGS)
    return swept, dict(TRACES)


def test_every_trial_of_the_budget_is_told_its_recorded_value(searched):
    swept, _ = searched
    assert [row["trial"] for row in swept.trials] == list(range(6))
    assert {row["status"] for row in swept.trials} == {"done"} and {row["steps"] for row in swept.trials} == {40}
    assert {row["round"] for row in swept.trials} == {0}  # no rounds: the trial id is the order asked
    assert (swept.summary["rounds"], swept.summary["populations"], swept.summary["trials"]) == (1, 1, 6)
    assert swept.summary["plans"]["0"]["refill"] is True
    assert study(swept.folder).direction == optuna.study.StudyDirection.MAXIMIZE  # val/accuracy: higher
    assert_told_as_recorded(swept)
    for t in study(swept.folder).trials:
        assert sorted(t.intermediate_values) == [10, 20, 30, 40]  # reported at every own evaluation


def test_asked_points_are_distinct_and_in_the_space(searched):
    swept, _ = searched
    points = [(row["optimizer.learning_rate"], row["seed"]) for row in swept.trials]
    assert len(set(points)) == 6
    assert all(1e-3 <= lr <= 1e-1 and 0 <= seed < 100 for lr, seed in points)


def test_one_compile_for_every_ask(searched):
    swept, traces = searched
    prep = prepare(apply_overrides(load_module("digits_mlp").config(), swept.trials[0]["overrides"]), Store())
    shapes = {tuple(np.shape(b.x)) for b in prep.evals.values()}  # val and test: one program per batch shape
    assert traces == {"train": 1, "eval": len(shapes)}


def test_a_trial_asked_for_a_freed_slot_enters_in_its_create_state(home):
    folder = home / "entry"
    (folder / "checkpoints").mkdir(parents=True)
    store = Store()
    opts = SweepOptions(strategy="tpe", trials=4, refill=True, vmap=True, show_progress=False)
    sp = resolve_sweep("digits_mlp", [f"{k}={v}" for k, v in SPACE.items()] + FIXED, store, opts)
    search = OptunaSearch(folder, "tpe", 0, True, sp.space, startup=2)
    trials, recs = [], {}
    source = SearchSource(search, sp, store, 4, trials, recs, "val", "accuracy", prunes=False)
    source.prime(2)
    g = source.group
    g.chunks = [g.trials[:2]]
    prep = prepare(trials[0].cfg, store, steps_per_call=g.steps_per_call)
    population = RefillPopulation(g, prep, trials, recs, folder, 2, True, (), 0.5, {"set": False}, lambda: None,
                                  lambda n, loss: None, source=source, decide=source.decide)
    engine = population.engine
    engine.execute(max_calls=40 // g.steps_per_call)  # trials 0 and 1 end; 2 and 3 are asked for their slots
    assert engine.slots == [2, 3] and list(engine.offsets) == [40, 40] and engine.live.all()
    assert [t.state for t in search.study.trials[:2]] == [optuna.trial.TrialState.COMPLETE] * 2  # told first
    stacked = jax.device_get(engine.pop.states())
    for slot, trial in enumerate(engine.slots):
        _, alone = create_state(trials[trial].cfg, prep.info, g.total_steps)
        got, want = jax.tree.leaves(jax.tree.map(lambda a, slot=slot: a[slot], stacked)), jax.tree.leaves(alone)
        assert len(got) == len(want)
        for a, b in zip(got, jax.device_get(want), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    population.execute()
    assert [t.state for t in search.study.trials] == [optuna.trial.TrialState.COMPLETE] * 4


def test_asha_rungs_stop_members_and_prune_their_trials(home):
    swept = sweep("digits_mlp", *ARGS, "--max-population", "3", "--rungs", "20", "--keep", "0.5")
    stopped = [row for row in swept.trials if row["status"] == "stopped"]
    assert stopped and len(stopped) < 6 and len(swept.trials) == 6
    assert all((row["stopped_at"], row["steps"]) == (20, 20) for row in stopped)
    assert_told_as_recorded(swept)


def test_the_pruner_stops_members_of_a_refilled_population(home):
    swept = sweep("digits_mlp", *ARGS, "--strategy", "qmc", "--pruner", "median")
    pruned = [row for row in swept.trials if row["status"] == "pruned"]
    assert pruned and len(swept.trials) == 6
    assert all(row["steps"] == row["stopped_at"] and row["stopped_at"] % 10 == 0 for row in pruned)
    assert_told_as_recorded(swept)


class StopAt(Hook):
    """Sets the sweep's stop flag (what Ctrl-C sets) at the ``calls``-th compiled call a member sees."""

    def __init__(self, flag: dict, seen: list[int], calls: int):
        self.flag, self.seen, self.calls = flag, seen, calls

    def after_call(self, steps, metrics) -> None:
        self.seen[0] += 1
        self.flag["set"] = self.flag["set"] or self.seen[0] == self.calls


def test_a_stopped_refill_search_resumes_to_the_uninterrupted_one(searched, home, monkeypatch):
    reference, _ = searched
    folder = home / "stopped"
    flag, seen = {"set": False, "signal": None}, [0]
    monkeypatch.setattr(rounds, "sigint_flag", lambda: contextlib.nullcontext(flag))
    with pytest.raises(PipelineError, match="interrupted"):
        python_sweep("digits_mlp", SPACE, overrides=FIXED, strategy="tpe", trials=6, max_population=2, refill=True,
                     vmap=True, sweep_dir=folder, hooks=lambda trial: [StopAt(flag, seen, 11)])
    monkeypatch.undo()
    rows = read_sweep(folder).trials
    assert {"done", "running"} <= {row["status"] for row in rows}  # stopped after a turnover, mid-way
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in study(folder).trials)

    resumed = sweep("digits_mlp", *ARGS, "--sweep-dir", str(folder))
    assert journal(folder) == journal(reference.folder)
    assert without_wall(resumed.trials) == without_wall(reference.trials)
    got, want = pq.read_table(folder / "curves.parquet"), pq.read_table(reference.folder / "curves.parquet")
    assert got.equals(want)


def test_a_key_that_changes_the_program_is_refused_in_one_line(cli, workdir, monkeypatch):
    monkeypatch.setenv("PIPELINE_SWEEPS", str(workdir / "sweeps"))
    r = cli("sweep", "digits_mlp", *FIXED, "model.hidden=choice(16;32)", *OPTIONS)
    assert r.code == 2, r.err
    assert "bad space for 'model.hidden': --refill with --strategy tpe trains every trial in one population" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (workdir / "sweeps").exists()

