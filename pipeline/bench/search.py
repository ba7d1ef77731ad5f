"""``pipeline bench search``: what the search strategies are for, at a fixed wall-clock budget.

Each (task, strategy, search seed) runs in a fresh Python process for the task's budget of
seconds, counted from the moment the process is started (imports and compiles included), and is
then stopped with SIGINT, as a user's Ctrl-C would. Every validation evaluation of every trial is
recorded with its time by a hook, the same hook for every strategy, so "best so far" means the
same thing for all of them: the best validation metric any trial had reached by that time, and
the trial (and step) chosen is the one with that best value, whose test metric is reported.

The anchor is what a user would run today: Optuna's ``study.optimize`` with the same TPE sampler,
calling ``pipeline.fit`` one trial at a time in one process. The others are ``pipeline.sweep``:
random search in populations, TPE asked a population at a time, population-based training, and
random search with slot refill and ASHA rungs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Task:
    name: str
    experiment: str
    budget_s: float
    overrides: tuple[str, ...]  # every trial's fixed keys
    metric: str  # the validation metric the search is judged by
    higher: bool
    pbt_interval: int
    rungs: tuple[int, ...]  # refill+ASHA's rungs (each member's own steps)

    @property
    def steps(self) -> int:
        """A trial's steps (its ``steps=`` override)."""
        return int(next(o for o in self.overrides if o.startswith("steps=")).split("=")[1])


# Three decades of learning rate too many, a momentum and a weight decay: a space where most points are
# poor, as a user's first search space is, so that a strategy that learns where the good ones are shows it.
SPACE = {"optimizer.learning_rate": "loguniform(1e-5,1)", "optimizer.b1": "uniform(0.5,0.99)",
         "optimizer.weight_decay": "loguniform(1e-6,1e-1)"}
# Judged by validation loss (cross-entropy, or mean squared error): it keeps improving where accuracy on
# 144 validation rows moves in steps of 0.7% and saturates within seconds.
TASKS = {
    "mlp": Task("mlp", "digits_mlp", 40.0, ("steps=1200", "eval_every=100", "best_metric=loss"), "loss", False,
                200, (100, 400)),
    "cnn": Task("cnn", "digits_cnn", 60.0, ("steps=600", "eval_every=100", "best_metric=loss"), "loss", False,
                100, (100, 300)),
    "regression": Task("regression", "regression_mlp", 40.0, ("steps=1200", "eval_every=100", "best_metric=loss",
                                                              "optimizer.schedule=constant"), "loss", False,
                       200, (100, 400)),
}
STRATEGIES = ("optuna_sequential", "random", "tpe", "pbt", "refill_asha")
POPULATION = 8
KEEP = 0.5  # the sweep's default --keep: each rung keeps the better half of the members recorded there
TRIALS = 3000  # the trial budget of the sweeps: more than any of them reaches within its wall-clock budget
PBT_LENGTH = 100  # PBT's one population trains this many times a trial's steps: more than its budget has time for


def optuna_space(space: dict[str, str]) -> list[list]:
    """``[key, low, high, log]`` of each dimension: what the anchor's objective suggests."""
    out = []
    for key, text in space.items():
        kind, args = text.split("(", 1)
        low, high = (float(a) for a in args.rstrip(")").split(","))
        out.append([key, low, high, kind == "loguniform"])
    return out


# Run in a fresh process: argv[1] is this job as JSON. Prints one JSON object: the evaluations.
SCRIPT = r'''
import json, os, signal, sys, threading, time
job = json.loads(sys.argv[1])
started = job["started"]
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background parent may have left SIGINT ignored
def deadline():
    if job["budget_s"] is None:  # run to the end (the bookkeeping figures are in the finished summary)
        return
    # Again every second, in case a signal lands while no handler of the pipeline's is installed (between
    # two trials of the anchor's loop a run's late signal is raised as fit returns: pipeline.signals).
    time.sleep(max(0.0, started + job["budget_s"] - time.time()))
    while True:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)

threading.Thread(target=deadline, daemon=True).start()
import pipeline
from pipeline.hooks import Hook
events = []

class Record(Hook):
    def __init__(self, trial):
        self.trial = trial
    def on_eval(self, step, metrics):
        events.append([time.time() - started, str(self.trial), int(step),
                       metrics.get("val", {}).get(job["metric"]), metrics.get("test", {}).get(job["metric"])])

timing = None
def done():
    print(json.dumps({"events": events, "timing": timing}), flush=True)
    os._exit(0)

space, fixed = job["space"], job["overrides"]
try:
    if job["strategy"] == "optuna_sequential":
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=job["seed"])
        study = optuna.create_study(direction="maximize" if job["higher"] else "minimize", sampler=sampler)
        def objective(trial):
            values = [f"{key}={trial.suggest_float(key, low, high, log=log)!r}"
                      for key, low, high, log in job["optuna_space"]]
            result = pipeline.fit(job["experiment"], overrides=fixed + values + ["plot=false"],
                                  hooks=[Record(trial.number)], run_dir=os.path.join(job["work"], f"t{trial.number}"))
            value = (result.summary["best"] or {}).get("value")
            return float("nan") if value is None else value  # a diverged trial: Optuna records it failed
        study.optimize(objective, catch=())
    else:
        options = dict(search_seed=job["seed"], max_population=job["population"], no_vmap=False)
        strategy, trials = job["strategy"], job["trials"]  # more than the budget has time for
        if strategy == "pbt":
            fixed = fixed + [f"pbt.interval={job['pbt_interval']}"]
            fixed = [f for f in fixed if not f.startswith("steps=")] + [f"steps={job['pbt_steps']}"]
            trials = job["population"]
        if job["trials_override"]:
            trials = job["trials_override"]
        if strategy == "refill_asha":
            strategy, options["refill"], options["rungs"], options["keep"] = "random", True, job["rungs"], job["keep"]
        result = pipeline.sweep(job["experiment"], space, strategy=strategy, trials=trials,
                                overrides=fixed + ["plot=false"], sweep_dir=os.path.join(job["work"], "sweep"),
                                hooks=lambda trial: [Record(trial)], **options)
        timing = {**result.summary["timing"], "wall_s": result.summary["wall_s"]}
except KeyboardInterrupt:
    pass
except pipeline.PipelineError as exc:
    if "interrupted" not in str(exc):
        print(json.dumps({"error": str(exc)}), flush=True)
        os._exit(1)
done()
'''


def run_job(task: Task, strategy: str, seed: int, work: Path, to_the_end: dict | None = None) -> dict[str, Any]:
    """One strategy on one task for the task's budget, in a fresh process; its evaluations. ``to_the_end``
    (``{"trials": N, "pbt_steps": S}``): a sweep of that size run to its end instead, for its timing."""
    end = to_the_end or {}
    job = {"started": time.time(), "budget_s": None if to_the_end else task.budget_s, "metric": task.metric,
           "higher": task.higher, "experiment": task.experiment, "space": SPACE, "overrides": list(task.overrides),
           "strategy": strategy, "seed": seed, "population": POPULATION, "work": str(work),
           "pbt_interval": task.pbt_interval, "pbt_steps": end.get("pbt_steps", task.steps * PBT_LENGTH),
           "rungs": list(task.rungs), "keep": KEEP, "trials": TRIALS, "trials_override": end.get("trials"),
           "optuna_space": optuna_space(SPACE)}
    env = {**os.environ, "PIPELINE_RUNS": str(work / "runs"), "PIPELINE_SWEEPS": str(work / "sweeps")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(job)], capture_output=True, text=True, env=env,
                         timeout=task.budget_s + 900)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": out.stderr.strip().splitlines()[-1:] or ["no output"]}
    return result


def summarize(task: Task, events: list[list]) -> dict[str, float]:
    """Best validation value reached, when it was first reached, and the chosen trial's test value."""
    sign = 1.0 if task.higher else -1.0
    valid = [e for e in events if e[3] is not None and math.isfinite(e[3])]
    if not valid:
        return {"best_val": math.nan, "test_of_chosen": math.nan, "time_to_best_s": math.nan, "evaluations": 0}
    best = max(valid, key=lambda e: (sign * e[3], -e[0]))
    return {"best_val": best[3], "test_of_chosen": best[4] if best[4] is not None else math.nan,
            "time_to_best_s": best[0], "evaluations": len(valid)}


def best_so_far(task: Task, events: list[list], at: float) -> float:
    sign = 1.0 if task.higher else -1.0
    values = [e[3] for e in events if e[0] <= at and e[3] is not None and math.isfinite(e[3])]
    return max(values, key=lambda v: sign * v) if values else math.nan


def time_to_reach(task: Task, events: list[list], target: float) -> float:
    """When ``events`` first reached ``target`` (nan: never)."""
    for e in sorted(events, key=lambda e: e[0]):
        if e[3] is not None and math.isfinite(e[3]) and (e[3] >= target if task.higher else e[3] <= target):
            return e[0]
    return math.nan


def run_search_bench(out: Path, tasks: list[str], strategies: list[str], seeds: range,
                     docs: Path | None) -> pa.Table:
    rows, curves = [], []
    for name in tasks:
        task = TASKS[name]
        for strategy in strategies:
            for seed in seeds:
                with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
                    result = run_job(task, strategy, seed, Path(tmp))
                # What a stopped run evaluated after the signal (its last call finishing) is past the budget.
                events = [e for e in result.get("events", []) if e[0] <= task.budget_s]
                row = {"task": name, "strategy": strategy, "seed": seed, "budget_s": task.budget_s,
                       "metric": f"val/{task.metric}", "error": result.get("error") and str(result["error"]),
                       **summarize(task, events)}
                rows.append(row)
                curves += [{"task": name, "strategy": strategy, "seed": seed, "time_s": float(e[0]),
                            "trial": e[1], "step": e[2], "val": e[3], "test": e[4]} for e in events]
                print(f"{name:10s} {strategy:18s} seed {seed}: best val {row['best_val']:.4f} "
                      f"at {row['time_to_best_s']:.1f}s, test {row['test_of_chosen']:.4f}"
                      + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
    costs = [measure_bookkeeping(TASKS[name], strategy) for name in tasks for strategy in BOOKKEEPING
             if strategy in strategies]
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, out / "search.parquet")
    pq.write_table(pa.Table.from_pylist(curves), out / "search-curves.parquet")
    if costs:
        pq.write_table(pa.Table.from_pylist(costs), out / "search-bookkeeping.parquet")
    if docs is not None:
        write_report(docs, rows, curves, tasks, strategies, costs)
    return table


# The searches whose bookkeeping is measured, each run to its end on the task: TPE 8 rounds of a population,
# PBT 10 times the task's steps (an exploit every pbt_interval), refill+ASHA 64 trials.
BOOKKEEPING = ("tpe", "pbt", "refill_asha")


def measure_bookkeeping(task: Task, strategy: str) -> dict[str, Any]:
    """One finished sweep's ``timing`` (``pipeline.sweep.timing``): its bookkeeping and its share of the wall."""
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        result = run_job(task, strategy, 0, Path(tmp), {"trials": 8 * POPULATION if strategy != "pbt" else None,
                                                        "pbt_steps": 10 * task.steps})
    timing = result.get("timing") or {}
    row = {"task": task.name, "strategy": strategy, "error": result.get("error") and str(result["error"]),
           **{k: timing.get(k, math.nan) for k in ("wall_s", "between_populations_s", "at_boundaries_s",
                                                  "bookkeeping_s", "bookkeeping_share")}}
    print(f"{task.name:10s} {strategy:18s} bookkeeping {row['bookkeeping_s']:.2f} s of {row['wall_s']:.1f} s "
          f"({100 * row['bookkeeping_share']:.1f}%)" + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
    return row


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _median_time(times: list[float]) -> float:
    """The median of times to reach a value, a seed that never reached it counting as the longest
    (nan when the median seed never reached it)."""
    if not times:
        return math.nan
    value = statistics.median([t if math.isfinite(t) else math.inf for t in times])
    return value if math.isfinite(value) else math.nan


def write_report(docs: Path, rows: list[dict], curves: list[dict], tasks: list[str], strategies: list[str],
                 costs: list[dict] = ()) -> None:
    """docs/benchmarks/search.md (the medians over seeds) and search.png (best so far against time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    lines = ["| task | strategy | best val (median) | test of chosen (median) | time to anchor's best "
             "(median s; never counts as longest) |",
             "|---|---|---|---|---|"]
    for ax, name in zip(axes[0], tasks):
        task = TASKS[name]
        grid = [task.budget_s * i / 100 for i in range(101)]
        anchor = [r for r in rows if r["task"] == name and r["strategy"] == "optuna_sequential"]
        anchor_best = _median([r["best_val"] for r in anchor])
        for strategy in strategies:
            mine = [r for r in rows if r["task"] == name and r["strategy"] == strategy]
            per_seed = [[c for c in curves if (c["task"], c["strategy"], c["seed"]) == (name, strategy, r["seed"])]
                        for r in mine]
            as_events = [[[c["time_s"], c["trial"], c["step"], c["val"], c["test"]] for c in cs] for cs in per_seed]
            ax.plot(grid, [_median([best_so_far(task, ev, t) for ev in as_events]) for t in grid], label=strategy)
            reach = _median_time([time_to_reach(task, ev, anchor_best) for ev in as_events]) if anchor else math.nan
            lines.append(f"| {name} | {strategy} | {_median([r['best_val'] for r in mine]):.4f} | "
                         f"{_median([r['test_of_chosen'] for r in mine]):.4f} | "
                         f"{'never' if math.isnan(reach) else f'{reach:.1f}'} |")
        ax.set_title(f"{name}: best val/{task.metric} so far")
        ax.set_xlabel("wall time (s)")
        ax.grid(alpha=0.3)
        values = [c["val"] for c in curves if c["task"] == name and c["val"] is not None and math.isfinite(c["val"])]
        if values:  # zoomed to the good end, where the strategies differ
            top = max(values) if task.higher else min(values)
            spread = _median([abs(v - top) for v in values]) or 0.05
            ax.set_ylim(top - 2 * spread, top + 0.2 * spread) if task.higher else ax.set_ylim(top - 0.2 * spread,
                                                                                               top + 2 * spread)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(docs / "search.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    seeds = len({r["seed"] for r in rows})
    described = "; ".join(f"{name}: `{TASKS[name].experiment}` {' '.join(TASKS[name].overrides)}, "
                          f"{TASKS[name].budget_s:.0f} s, rungs {','.join(map(str, TASKS[name].rungs))}"
                          for name in tasks)
    text = ["# Search benchmark", "",
            f"`pipeline bench search`: {seeds} search seeds per strategy, medians shown; each run a fresh process "
            "stopped by SIGINT at the task's wall-clock budget (imports and compiles included). The anchor, "
            "`optuna_sequential`, is Optuna's `study.optimize` with TPE calling `pipeline.fit` one trial at a time.",
            "", f"Space: {', '.join(f'`{k}={v}`' for k, v in SPACE.items())}. Populations of {POPULATION}; PBT one "
            f"population trained for the whole budget ({PBT_LENGTH} times the task's steps, more than it has time "
            f"for); refill+ASHA keeps {KEEP} at each rung. Tasks ({described}) "
            "are judged by the validation " + ", ".join(sorted({TASKS[n].metric for n in tasks})) + " ("
            + ("higher" if TASKS[tasks[0]].higher else "lower") + " is better); the test value is the chosen "
            "trial's, at its selected step.",
            "", *lines, "", "![best validation metric so far against wall time](search.png)", ""]
    if costs:
        text += ["## Bookkeeping", "",
                 "Each search run to its end once more (TPE: 8 rounds of 8; PBT: 10 times the task's steps, an "
                 "exploit every `pbt.interval`; refill+ASHA: 64 trials), and its `timing` read from `summary.json`: "
                 "the wall time between populations and at evaluation boundaries spent by the search itself "
                 "(asks, tells, fresh states, exploit and explore, refills, the records).", "",
                 "| task | strategy | wall (s) | between populations (s) | at boundaries (s) | share of wall |",
                 "|---|---|---|---|---|---|"]
        text += [f"| {c['task']} | {c['strategy']} | {c['wall_s']:.1f} | {c['between_populations_s']:.2f} | "
                 f"{c['at_boundaries_s']:.2f} | {100 * c['bookkeeping_share']:.1f}% |" for c in costs]
        text.append("")
    (docs / "search.md").write_text("\n".join(text))
