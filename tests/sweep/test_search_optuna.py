"""Optuna searches: a population asked a round, trained with the first round's programs, told back;
a pruner stops members; a killed search resumes to the uninterrupted journal and table."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import Config
from pipeline.sweep.optuna_search import JOURNAL, STUDY, Encoding
from pipeline.sweep.rounds import round_size
from pipeline.sweep.space import parse_space
from tests.conftest import ROOT
from tests.sweep.conftest import TINY, TRACES, pipeline, read_sweep, sweep

optuna = pytest.importorskip("optuna")  # the optuna extra (CI installs it)

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

LR = "optimizer.learning_rate=loguniform(1e-4,1e-1)"
SEARCH = [LR, "--strategy", "tpe", "--trials", "8", "--max-population", "4"]


def study(folder):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / JOURNAL)))
    return optuna.load_study(study_name=STUDY, storage=storage)


@pytest.fixture(scope="module")
def tpe(home):
    """Two rounds of four (TPE: the first round at random, the second from the model, constant liar), the
    traces of the population programs over the whole sweep, and the journal's appends (their operations)."""
    TRACES.clear()
    backend = optuna.storages.journal.JournalFileBackend
    append, appends = backend.append_logs, []

    def counted(self, logs):
        appends.append({log["op_code"] for log in logs})
        return append(self, logs)

    backend.append_logs = counted
    try:
        swept = sweep("digits_mlp", *TINY, *SEARCH)
    finally:
        backend.append_logs = append
    return swept, dict(TRACES), appends


def test_rounds_of_distinct_points_compile_once(tpe):
    swept, traces, _ = tpe
    assert [r["round"] for r in swept.trials] == [0] * 4 + [1] * 4
    for r in (0, 1):
        rates = [row["optimizer.learning_rate"] for row in swept.trials if row["round"] == r]
        assert len(set(rates)) == 4, rates  # a batch is not one point repeated
        assert all(1e-4 <= v <= 1e-1 for v in rates)
    assert {row["status"] for row in swept.trials} == {"done"}
    assert swept.summary["rounds"] == 2 and swept.summary["populations"] == 2
    # One population program and one evaluation program, traced in the first round; the second round
    # (a new batch of the same group, padded to the same size) compiles nothing.
    assert traces == {"train": 1, "eval": 1}  # val and test share one batch shape (prepare pads them alike)
    assert sorted(p.name for p in swept.folder.glob("checkpoints/*")) == ["g0-c0", "g0-c1"]
    # The search's own time: the gap between the two rounds (tell, ask, fresh states), within the sweep's
    # wall time. Without a pruner nothing is written at the evaluations (the values go with the results).
    timing = swept.summary["timing"]
    assert timing["between_populations_s"] > 0
    assert timing["bookkeeping_s"] < swept.summary["wall_s"]


def test_values_told_are_the_trials_table(tpe):
    swept, _, _ = tpe
    trials = study(swept.folder).trials
    assert [t.number for t in trials] == [row["trial"] for row in swept.trials]
    for t, row in zip(trials, swept.trials):
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.params == {"optimizer.learning_rate": row["optimizer.learning_rate"]}
        assert t.value == row["best_val_accuracy"]  # the selection metric at the selected step
        assert t.intermediate_values[row["best_step"]] == row["best_val_accuracy"]
        assert sorted(t.intermediate_values) == [20, 40]  # reported at every evaluation
    # Without a pruner they go with the result, from the trial's curve: the same values.
    curves = pq.read_table(swept.folder / "curves.parquet").to_pylist()
    val = {(c["trial"], c["step"]): c["value"] for c in curves if c["split"] == "val" and c["name"] == "accuracy"}
    assert {(t.number, step): v for t in trials for step, v in t.intermediate_values.items()} == val
    assert study(swept.folder).direction == optuna.study.StudyDirection.MAXIMIZE


def test_a_round_s_results_and_the_next_round_s_asks_are_one_append(tpe):
    """Between two rounds the journal is written once: the first round's values and results, then the
    second round's trials (a kill inside it leaves neither: test_search_killed_while_telling_resumes_exactly)."""
    *_, appends = tpe
    op = optuna.storages.journal._storage.JournalOperation
    trial_ops = [ops for ops in appends if ops & {op.CREATE_TRIAL, op.SET_TRIAL_STATE_VALUES}]
    assert trial_ops == [{op.CREATE_TRIAL, op.SET_TRIAL_PARAM, op.SET_TRIAL_USER_ATTR},  # round 0 asked
                         {op.SET_TRIAL_INTERMEDIATE_VALUE, op.SET_TRIAL_STATE_VALUES,  # round 0 told ...
                          op.CREATE_TRIAL, op.SET_TRIAL_PARAM, op.SET_TRIAL_USER_ATTR,  # ... round 1 asked
                          op.SET_TRIAL_SYSTEM_ATTR},  # (by TPE's model: what it sampled relative to the others)
                         {op.SET_TRIAL_INTERMEDIATE_VALUE, op.SET_TRIAL_STATE_VALUES}]  # round 1 told


def test_median_pruner_stops_members(home):
    swept = sweep("digits_mlp", *TINY[:1], "steps=60", *TINY[2:], *SEARCH, "--strategy", "qmc",
                  "--pruner", "median")
    pruned = [row for row in swept.trials if row["status"] == "pruned"]
    assert pruned and all(row["round"] == 1 for row in pruned)  # judged against the first round's trials
    states = {t.number: t for t in study(swept.folder).trials}
    for row in pruned:
        assert row["stopped_at"] in (20, 40) and row["steps"] == row["stopped_at"]
        t = states[row["trial"]]
        assert t.state == optuna.trial.TrialState.PRUNED
        assert max(t.intermediate_values) == row["stopped_at"]
    for row in swept.trials:
        if row["status"] == "done":
            assert states[row["trial"]].value == row["best_val_accuracy"]


def test_space_spellings_map_onto_distributions():
    space = parse_space(Config(data="digits"), [
        "optimizer.learning_rate=loguniform(1e-4,1e-1)", "optimizer.momentum=uniform(0.5,0.9)",
        "seed=range(1,9,2)", "model.hidden=choice(16;32,32)", "optimizer.weight_decay=logspace(1e-5,1e-3,3)",
        "label_smoothing=linspace(0,0.2,3)"])
    enc = Encoding(optuna, space)
    d = optuna.distributions
    assert enc.distributions["optimizer.learning_rate"] == d.FloatDistribution(1e-4, 1e-1, log=True)
    assert enc.distributions["optimizer.momentum"] == d.FloatDistribution(0.5, 0.9)
    assert enc.distributions["seed"] == d.IntDistribution(1, 7, step=2)
    assert enc.distributions["model.hidden"] == d.CategoricalDistribution(["16", "32,32"])
    assert enc.distributions["optimizer.weight_decay"].choices == pytest.approx((1e-5, 1e-4, 1e-3))
    assert enc.distributions["label_smoothing"].choices == pytest.approx((0.0, 0.1, 0.2))
    values = enc.decode({"optimizer.learning_rate": 0.01, "optimizer.momentum": 0.6, "seed": 3,
                         "model.hidden": "32,32", "optimizer.weight_decay": 1e-4, "label_smoothing": 0.1})
    assert values["model.hidden"] == (32, 32) and values["seed"] == 3


def test_round_size_rule():
    assert round_size(16, None, capacity=1000) == 4  # about four rounds
    assert round_size(16, None, capacity=3) == 3  # at most what fits the memory budget
    assert round_size(3, None, capacity=1000) == 2 and round_size(1, None, capacity=1000) == 1
    assert round_size(16, 5, capacity=3) == 5  # --max-population decides (populations split by memory)


BAD = [
    (["--strategy", "annealing"], "argument --strategy: invalid choice: 'annealing' (choose from"),
    (["--trials", "2", "--max-population", "4", "--strategy", "tpe"],
     "bad value for '--trials': 2 is less than one population (--max-population 4)"),
    (["--strategy", "grid", "--pruner", "median", "seed=range(2)"], "--pruner median needs a search"),
    (["--strategy", "tpe", "--executor", "ray"], "--strategy tpe runs its populations in this process"),
]


@pytest.fixture
def bare(cli, workdir, monkeypatch):
    """The CLI in-process with the store, runs and sweeps roots in this test's own folder."""
    monkeypatch.setenv("PIPELINE_SWEEPS", str(workdir / "sweeps"))
    return cli


@pytest.mark.parametrize(("args", "message"), BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line(bare, workdir, args, message):
    r = bare("sweep", "digits_mlp", *TINY, LR, *args)
    assert r.code == 2 and message in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not (workdir / "sweeps").exists()
    if "annealing" in args:
        assert "'tpe', 'gp', 'cmaes', 'qmc'" in r.err  # the valid ones named


@pytest.mark.parametrize(("module", "message"), [("optuna", "needs the optuna extra: pip install 'pipeline[optuna]'"),
                                                 ("cmaes", "needs the cmaes package: pip install cmaes")])
def test_missing_package_is_one_line(bare, workdir, monkeypatch, module, message):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: `import` raises ImportError
    r = bare("sweep", "digits_mlp", *TINY, LR, "--strategy", "cmaes")
    assert r.code == 2 and f"error: --strategy cmaes {message}" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (workdir / "sweeps").exists()


# -- a killed search resumes exactly ---------------------------------------------------------------
KILLED = [*TINY[:1], "steps=60", "eval_every=20", "checkpoint_every=20", "batch_size=32", "--no-progress", *SEARCH,
          "--vmap"]


def journal(folder) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs) for t in study(folder).trials]


def table(folder) -> list[dict]:
    rows = read_sweep(folder).trials
    for row in rows:
        row.pop("wall_s")
    return rows


@pytest.mark.parametrize("pruner", [["--pruner", "median"], []], ids=["median", "no-pruner"])
def test_search_killed_mid_round_resumes_exactly(home, pruner):
    killed_args = [*KILLED, *pruner]
    reference = sweep(*["digits_mlp", *killed_args])
    folder = home / f"killed-search{len(pruner)}"
    # SIGKILL right after the 5th population checkpoint was handed to Orbax (tests/plugins/kill_after_save.py):
    # the first round's population saves at steps 20, 40 and 60, so this is the second round's step 40,
    # mid-round. With the pruner, the values of step 40 are already reported to the journal while the
    # resume may start from step 20 (the pruner must judge step 40 as if they were not there yet).
    # Without one, nothing of the round is reported yet: its values come with its results, from curves
    # that the resumed population's metrics hold from before the kill.
    env = {**os.environ, "PIPELINE_TEST_PLUGIN": "tests.plugins.kill_after_save", "PIPELINE_TEST_KILL_AFTER_SAVE": "5"}
    killed = subprocess.run([sys.executable, "-m", "pipeline", "sweep", "digits_mlp", *killed_args, "--sweep-dir",
                             str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    running = [t for t in study(folder).trials if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.user_attrs["round"] for t in running] == [1] * 4  # asked, not told: the round it was in
    assert all(bool(t.intermediate_values) == bool(pruner) for t in running)  # reported at evaluations: with a pruner

    r = pipeline("sweep", "digits_mlp", *killed_args, "--sweep-dir", str(folder))
    assert r.code == 0, r.err
    assert journal(folder) == journal(reference.folder)
    assert {r["status"] for r in table(folder)} == ({"done", "pruned"} if pruner else {"done"})
    assert table(folder) == table(reference.folder)
    got, want = pq.read_table(folder / "curves.parquet"), pq.read_table(reference.folder / "curves.parquet")
    assert got.equals(want)
    np.testing.assert_array_equal(np.asarray(got.column("value")), np.asarray(want.column("value")))


@pytest.mark.parametrize("at", [0, 4], ids=["first-round", "last-round"])
def test_search_killed_while_telling_resumes_exactly(home, at):
    """Killed inside the append of a round's results, after its population was recorded finished: the
    resume trains nothing more and tells that round, its values read back from ``curves.parquet``. The
    first round's results share their append with the second round's asks: neither is in the journal."""
    reference = sweep(*["digits_mlp", *KILLED])
    folder = home / f"killed-telling-{at}"
    env = {**os.environ, "PIPELINE_TEST_PLUGIN": "tests.plugins.kill_at_tell", "PIPELINE_TEST_KILL_AT_TELL": str(at)}
    killed = subprocess.run([sys.executable, "-m", "pipeline", "sweep", "digits_mlp", *KILLED, "--sweep-dir",
                             str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert {r["status"] for r in table(folder)} == {"done"}  # every trial recorded ...
    untold = [t for t in study(folder).trials if t.state == optuna.trial.TrialState.RUNNING]
    assert [(t.number, t.intermediate_values) for t in untold] == [(n, {}) for n in range(at, at + 4)]  # ... 4 not told
    assert len(study(folder).trials) == at + 4  # nothing asked after them

    r = pipeline("sweep", "digits_mlp", *KILLED, "--sweep-dir", str(folder))
    assert r.code == 0, r.err
    assert journal(folder) == journal(reference.folder)
    assert table(folder) == table(reference.folder)
