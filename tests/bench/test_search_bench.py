"""`pipeline bench search`: how its figures are read from the recorded evaluations, and its bad input.

The runs themselves take minutes of wall clock (a budget per task); these check the arithmetic the
table and the plot are made of, on events written by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pipeline.bench.search import SPACE, TASKS, best_so_far, optuna_space, summarize, time_to_reach, write_report

# [seconds since the process started, trial, step, val, test]
EVENTS = [[5.0, "0", 100, 0.80, 0.79], [7.0, "1", 100, 0.90, 0.85], [9.0, "0", 200, 0.88, 0.90],
          [11.0, "2", 100, None, None], [12.0, "1", 200, 0.90, 0.70]]
HIGH = replace(TASKS["mlp"], higher=True)  # the events above read as an accuracy


def test_the_chosen_trial_is_the_first_to_reach_the_best_validation_value_and_its_test_is_reported():
    figures = summarize(HIGH, EVENTS)
    # 0.90 is reached at 7 s (trial 1, step 100) and again later: the earlier is the one chosen.
    assert figures == {"best_val": 0.90, "test_of_chosen": 0.85, "time_to_best_s": 7.0, "evaluations": 4}


def test_lower_is_better_picks_the_smallest():
    task = TASKS["mlp"]  # judged by validation loss
    assert not task.higher and task.metric == "loss"
    assert summarize(task, EVENTS)["best_val"] == 0.80
    assert best_so_far(task, EVENTS, 8.0) == 0.80


def test_best_so_far_and_time_to_reach_read_the_curve_at_a_time():
    task = HIGH
    assert math.isnan(best_so_far(task, EVENTS, 4.9))
    assert [best_so_far(task, EVENTS, t) for t in (5.0, 6.0, 7.0, 100.0)] == [0.80, 0.80, 0.90, 0.90]
    assert time_to_reach(task, EVENTS, 0.85) == 7.0
    assert math.isnan(time_to_reach(task, EVENTS, 0.95))


def test_no_evaluation_is_nan_not_a_crash():
    figures = summarize(TASKS["cnn"], [[3.0, "0", 50, None, None]])
    assert figures["evaluations"] == 0 and math.isnan(figures["best_val"])


def test_an_unknown_task_or_strategy_is_one_line(cli):
    result = cli("bench", "search", "mnist")
    assert result.code == 2 and result.err.strip().splitlines() == [
        "error: unknown search benchmark task 'mnist'; choose from mlp, cnn, regression"]
    result = cli("bench", "search", "mlp", "--peers", "hyperopt")
    assert result.code == 2 and result.err.strip().splitlines() == [
        "error: unknown search benchmark strategy 'hyperopt'; choose from optuna_sequential, random, tpe, pbt, "
        "refill_asha"]


def test_the_anchor_suggests_the_sweeps_space():
    assert optuna_space(SPACE) == [["optimizer.learning_rate", 1e-5, 1.0, True], ["optimizer.b1", 0.5, 0.99, False],
                                   ["optimizer.weight_decay", 1e-6, 0.1, True]]


def test_the_report_has_the_medians_and_the_bookkeeping_table(tmp_path):
    rows = [{"task": "mlp", "strategy": s, "seed": seed, "best_val": v, "test_of_chosen": v + 0.01,
             "time_to_best_s": 10.0} for s, values in (("optuna_sequential", (0.05, 0.04, 0.06)),
                                                        ("tpe", (0.03, 0.02, 0.05)))
            for seed, v in enumerate(values)]
    # tpe seed 0 reaches the anchor's median best (0.05) at 4 s, seed 1 at 6 s, seed 2 at 9 s: median 6 s.
    curves = [{"task": "mlp", "strategy": "tpe", "seed": seed, "time_s": t, "trial": "0", "step": 100, "val": v,
               "test": v} for seed, t, v in ((0, 4.0, 0.05), (1, 6.0, 0.04), (2, 9.0, 0.05))]
    curves += [{"task": "mlp", "strategy": "optuna_sequential", "seed": seed, "time_s": 20.0, "trial": "0",
                "step": 100, "val": v, "test": v} for seed, v in enumerate((0.05, 0.04, 0.06))]
    costs = [{"task": "mlp", "strategy": "tpe", "wall_s": 12.0, "between_populations_s": 0.3, "at_boundaries_s": 0.06,
              "bookkeeping_s": 0.36, "bookkeeping_share": 0.03}]
    write_report(tmp_path, rows, curves, ["mlp"], ["optuna_sequential", "tpe"], costs)
    text = (tmp_path / "search.md").read_text()
    assert "| mlp | optuna_sequential | 0.0500 | 0.0600 | 20.0 |" in text
    assert "| mlp | tpe | 0.0300 | 0.0400 | 6.0 |" in text
    assert "| mlp | tpe | 12.0 | 0.30 | 0.06 | 3.0% |" in text
    # The setup as run, spelled out (no placeholder left unfilled).
    assert "PBT one population trained for the whole budget (100 times the task's steps" in text
    assert "refill+ASHA keeps 0.5 at each rung. Tasks (mlp: `digits_mlp` steps=1200" in text and "{" not in text
    assert (tmp_path / "search.png").stat().st_size > 0


def test_a_negative_first_seed_is_one_line(cli):
    result = cli("bench", "search", "mlp", "--first-seed", "-1")
    assert result.code == 2 and result.err.strip().splitlines() == [
        "error: bad value for '--first-seed': -1 must be at least 0"]


def test_a_seed_that_never_reached_counts_as_the_longest():
    from pipeline.bench.search import _median_time

    assert _median_time([4.0, math.nan, 9.0]) == 9.0  # not 6.5: the seed that never got there is not dropped
    assert math.isnan(_median_time([4.0, math.nan, math.nan])) and math.isnan(_median_time([]))
    assert _median_time([3.0, 5.0]) == 4.0
