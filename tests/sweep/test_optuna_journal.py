"""The study's journal with held appends: a round's asks, an evaluation's reports and a population's
results each land in one append; a process killed inside one leaves none of it, and the resumed
search asks exactly what the uninterrupted one asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.config import Config
from pipeline.sweep.optuna_search import JOURNAL, OptunaSearch
from pipeline.sweep.space import parse_space
from tests.conftest import ROOT

optuna = pytest.importorskip("optuna")  # the optuna extra (CI installs it)

SPACE = ["optimizer.learning_rate=loguniform(1e-5,1)", "optimizer.b1=uniform(0.5,0.99)"]


def search(folder) -> OptunaSearch:
    folder.mkdir(exist_ok=True)
    return OptunaSearch(folder, "tpe", 3, False, parse_space(Config(), SPACE), startup=4)


def lines(folder) -> int:
    return len((folder / JOURNAL).read_bytes().splitlines())


def appends(s: OptunaSearch) -> list[int]:
    """The size of every append to the journal file from now on."""
    sizes: list[int] = []
    write = s.journal.file.append_logs
    s.journal.file.append_logs = lambda logs: (sizes.append(len(logs)), write(logs))[1]
    return sizes


def play(s: OptunaSearch, rounds: int) -> list:
    """``rounds`` rounds of 4: asked, one evaluation reported, told; every point asked, in order."""
    asked = []
    for r in range(rounds):
        points = s.ask(4, r)
        s.report(10, {p.trial: p.values["optimizer.learning_rate"] for p in points})
        with s.together():
            for p in points:
                s.tell(p.trial, abs(p.values["optimizer.learning_rate"] - 0.01))
        asked += points
    return asked


def test_a_round_a_report_and_its_results_are_one_append_each(tmp_path):
    s = search(tmp_path)
    sizes = appends(s)
    before = lines(tmp_path)
    with s.together():
        points = s.ask(4, 0)
        assert lines(tmp_path) == before  # held: nothing on disk yet, yet the study sees them
        assert [t.number for t in s.study.get_trials(deepcopy=False)] == [0, 1, 2, 3]
    assert len(sizes) == 1 and lines(tmp_path) == before + sizes[0]
    s.report(10, {p.trial: 0.5 for p in points})
    with s.together():
        for p in points:
            s.tell(p.trial, 0.5)
    assert sizes[1:] == [4, 4]  # four reported values; four results
    assert len({tuple(p.values.values()) for p in points}) == 4

    # What the file holds is what the study saw: a fresh reader of the journal agrees.
    stored = optuna.load_study(study_name="sweep", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / JOURNAL)))).trials
    assert [(t.number, t.params, t.intermediate_values, t.value, t.user_attrs) for t in stored] == \
        [(t.number, t.params, t.intermediate_values, t.value, t.user_attrs) for t in s.study.trials]


def test_without_a_pruner_a_population_s_curves_go_with_its_results_in_one_append(tmp_path):
    s = search(tmp_path)
    points = s.ask(4, 0)
    sizes = appends(s)
    with s.together():
        for p in points:
            s.report_curve(p.trial, {20: 0.3, 10: 0.5})
            s.tell(p.trial, 0.3)
    assert sizes == [4 * 3]  # two values and a result for each of four trials: one append
    trials = s.study.get_trials(deepcopy=False)
    assert [t.intermediate_values for t in trials] == [{10: 0.5, 20: 0.3}] * 4
    s.report_curve(points[0].trial, {10: 0.5, 20: 0.3})  # already reported (a killed attempt's): kept, not rewritten
    assert sizes == [12]


def test_a_kill_inside_an_ask_leaves_none_of_it_and_the_resumed_search_asks_the_same(tmp_path):
    reference = play(search(tmp_path / "reference"), 3)

    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, pathlib
        from tests.sweep.test_optuna_journal import play, search
        s = search(pathlib.Path({str(killed)!r}))
        play(s, 2)
        ask, asked = s.study.ask, []
        def dying(*args, **kwargs):  # the third round's third ask: SIGKILL-like, no cleanup
            if len(asked) == 2:
                os._exit(9)
            asked.append(ask(*args, **kwargs))
            return asked[-1]
        s.study.ask = dying
        s.ask(4, 2)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 9, run.stderr
    resumed = search(killed)
    assert len(resumed.asked()) == 8  # the two whole rounds; none of the third round's two asks
    assert resumed.asked() == reference[:8]
    assert resumed.ask(4, 2) == reference[8:]

