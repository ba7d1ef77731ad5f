"""`pipeline bench search`: how its figures are read from the recorded evaluations, and its bad input.

The runs themselves take minutes of wall clock (a budget per task); these check the arithmetic the
table and the plot are made of, on events written by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pipeline.bench.search import TASKS, best_so_far, summarize, time_to_reach

# [seconds since the process started, trial, step, val, test]
EVENTS = [[5.0, "0", 100, 0.80, 0.79], [7.0, "1", 100, 0.90, 0.85], [9.0, "0", 200, 0.88, 0.90],
          [11.0, "2", 100, None, None], [12.0, "1", 200, 0.90, 0.70]]


def test_the_chosen_trial_is_the_first_to_reach_the_best_validation_value_and_its_test_is_reported():
    figures = summarize(TASKS["mlp"], EVENTS)
    # 0.90 is reached at 7 s (trial 1, step 100) and again later: the earlier is the one chosen.
    assert figures == {"best_val": 0.90, "test_of_chosen": 0.85, "time_to_best_s": 7.0, "evaluations": 4}


def test_lower_is_better_picks_the_smallest():
    task = replace(TASKS["mlp"], higher=False)
    assert summarize(task, EVENTS)["best_val"] == 0.80
    assert best_so_far(task, EVENTS, 8.0) == 0.80


def test_best_so_far_and_time_to_reach_read_the_curve_at_a_time():
    task = TASKS["mlp"]
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
