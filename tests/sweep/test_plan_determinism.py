"""A sweep's numbers do not depend on the machine's load: ``--plan auto`` decides without a clock,
and whatever chose a group's plan, a resumed sweep keeps the plan its folder recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.sweep import plan_probe, plan_rule
from pipeline.sweep.population_run import PopulationRun
from tests.sweep.conftest import TINY, pipeline

pytestmark = pytest.mark.heavy  # long: `scripts/test --all` (CI) runs it, the default tier does not

# One group of four trials in two populations of two; 200 steps leave the probe calls to time.
TINY_200 = [a for a in TINY if not a.startswith(("steps=", "eval_every="))]
ARGS = ["digits_mlp", *TINY_200, "steps=200", "eval_every=40",
        "optimizer.learning_rate=choice(1e-3;3e-3;1e-2;3e-2)", "--max-population", "2"]


class Stopped(Exception):
    """Raised after the first population is recorded: the sweep stops there, as if killed."""


def slow_probe(monkeypatch, slower: str) -> None:
    """Time the ``slower`` plan a million times slower than it ran (``plan_probe``'s measured rates),
    so that ``--plan auto-measure`` picks the other; and probe both plans whatever the group's size."""
    monkeypatch.setattr(plan_probe, "REPAY", 0.0)
    sequential_rate = plan_probe._sequential_rate

    def sequential(*args, **kwargs) -> float:
        rate = sequential_rate(*args, **kwargs)
        return rate / 1e6 if slower == "sequential" else rate * 1e6

    monkeypatch.setattr(plan_probe, "_sequential_rate", sequential)


def stop_after_first_population(monkeypatch) -> None:
    forget = PopulationRun.forget_metrics

    def forget_then_stop(self) -> None:
        forget(self)
        raise Stopped

    monkeypatch.setattr(PopulationRun, "forget_metrics", forget_then_stop)


def run(*extra: str) -> dict:
    r = pipeline("sweep", *ARGS, *extra, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


def tables(folder: Path) -> tuple[list[dict], object]:
    trials = sorted(pq.read_table(folder / "trials.parquet").drop(["wall_s"]).to_pylist(), key=lambda r: r["trial"])
    curves = pq.read_table(folder / "curves.parquet").sort_by(
        [("trial", "ascending"), ("split", "ascending"), ("name", "ascending"), ("step", "ascending")])
    return trials, curves


def assert_same_numbers(a: Path, b: Path) -> None:
    (trials_a, curves_a), (trials_b, curves_b) = tables(a), tables(b)
    assert trials_a == trials_b
    assert curves_a.num_rows > 0 and curves_a.equals(curves_b)


def interrupted_then_resumed(folder: Path, monkeypatch, first: str, then: str, *extra: str) -> dict:
    """The sweep into ``folder`` stopped after its first population with the probe slowed for the
    ``first`` plan, then resumed with the probe slowed for the ``then`` plan."""
    with monkeypatch.context() as mp:
        slow_probe(mp, first)
        stop_after_first_population(mp)
        with pytest.raises(Stopped):
            pipeline("sweep", *ARGS, *extra, "--sweep-dir", str(folder))
    assert {r["status"] for r in tables(folder)[0]} == {"done", "pending"}
    with monkeypatch.context() as mp:
        slow_probe(mp, then)
        return run(*extra, "--sweep-dir", str(folder))


@pytest.mark.parametrize("slower", ["sequential", "population"])
def test_auto_never_times_and_a_resume_equals_a_fresh_sweep(home, monkeypatch, slower):
    def never(*args, **kwargs):
        raise AssertionError("--plan auto timed a plan")

    with monkeypatch.context() as mp:
        slow_probe(mp, slower)
        mp.setattr(plan_probe, "measure", never)
        fresh = run()
    plan = fresh["plans"]["0"]
    assert plan["rule"] == "auto" and "member_steps_per_s" not in plan and not plan["forced"]
    other = "sequential" if slower == "population" else "population"
    resumed = interrupted_then_resumed(home / f"auto-{slower}", monkeypatch, slower, other)
    assert resumed["plans"] == fresh["plans"]
    assert_same_numbers(Path(fresh["sweep_dir"]), Path(resumed["sweep_dir"]))
    forced = run("--plan", plan["plan"])  # the plan the rule chose, forced: the same numbers
    assert_same_numbers(Path(fresh["sweep_dir"]), Path(forced["sweep_dir"]))


@pytest.mark.parametrize("slower", ["sequential", "population"])
def test_a_resumed_measured_sweep_keeps_its_recorded_plan(home, monkeypatch, slower):
    """The probe picked one plan when the sweep started; resumed, it would now pick the other:
    the recorded plan runs the rest, and the numbers are a fresh measured sweep's, bit for bit."""
    winner = "population" if slower == "sequential" else "sequential"
    with monkeypatch.context() as mp:
        slow_probe(mp, slower)
        fresh = run("--plan", "auto-measure")
    assert fresh["plans"]["0"]["plan"] == winner and fresh["plans"]["0"]["rule"] == "auto-measure"
    folder = home / f"measured-{slower}"
    resumed = interrupted_then_resumed(folder, monkeypatch, slower, winner, "--plan", "auto-measure")
    assert resumed["plans"]["0"]["plan"] == winner
    saved = json.loads((folder / "sweep.json").read_text())["plans"]["0"]
    assert saved["plan"] == winner and set(saved["member_steps_per_s"]) == {"population", "sequential"}
    assert_same_numbers(Path(fresh["sweep_dir"]), folder)


def test_a_forced_plan_that_contradicts_the_recorded_one_is_one_line(home, monkeypatch):
    folder = home / "contradicted"
    with monkeypatch.context() as mp:
        stop_after_first_population(mp)
        with pytest.raises(Stopped):
            pipeline("sweep", *ARGS, "--plan", "population", "--sweep-dir", str(folder))
    before = (folder / "sweep.json").read_text(), json.dumps(tables(folder)[0])  # NaN equals NaN as text
    r = pipeline("sweep", *ARGS, "--no-vmap", "--sweep-dir", str(folder))
    assert r.code == 2
    assert r.err.strip().splitlines()[-1].endswith(
        f"--plan sequential contradicts sweep folder {folder}, whose group 0 ran as population; resume it with "
        "--plan auto (the recorded plan) or --plan population")
    assert ((folder / "sweep.json").read_text(), json.dumps(tables(folder)[0])) == before  # nothing changed
    assert run("--vmap", "--sweep-dir", str(folder))["plans"]["0"]["plan"] == "population"  # agrees: resumes


@pytest.mark.parametrize("args, message", [
    (["--plan", "sequential", "--vmap"], "--plan sequential and --vmap contradict each other; give one"),
    (["--vmap", "--no-vmap"], "--vmap and --no-vmap contradict each other; give one"),
    (["--plan", "auto-measure", "--refill"], "--plan auto-measure times a grid or random sweep's first population; "
                                              "--refill runs its populations without a probe"),
    (["--plan", "auto-measure", "--strategy", "pbt"], "--strategy pbt runs its populations without a probe"),
    (["--plan", "sometimes"], "invalid choice: 'sometimes'"),
])
def test_bad_plans_are_one_line(home, args, message):
    r = pipeline("sweep", *ARGS, *args)
    assert r.code == 2 and message in r.err, r.err


@pytest.mark.parametrize("backend, cores, flops, members, vmap", [
    ("gpu", 16, 3e9, 8, True),  # an accelerator: always the population
    ("tpu", 1, 1e12, 2, True),
    ("cpu", 2, 3.0e6, 8, True),  # digits_mlp's step (~2.8 MFLOP) on two cores
    ("cpu", 2, 3.0e7, 8, False),  # digits_cnn's step (~30 MFLOP) on two cores
    ("cpu", 16, 3.0e7, 8, True),  # ... on sixteen
    ("cpu", 2, 1e3, 1, False),  # one member: nothing to vmap
    ("gpu", 2, 1e3, 1, False),
])
def test_the_auto_rule(backend, cores, flops, members, vmap):
    chosen, why = plan_rule.auto_plan(backend, cores, flops, members)
    assert chosen is vmap and why
