"""``--plan auto-measure``: a vmapped population or one member at a time, whichever measured faster."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.sweep.plan_probe import choose
from tests.sweep.conftest import TINY, pipeline


@pytest.mark.parametrize("rates, vmap", [
    ({"population": 12_000.0, "sequential": 9_000.0}, True),  # an accelerator: the population wins
    ({"population": 7_000.0, "sequential": 9_500.0}, False),  # a few CPU cores under load
    ({"population": 5_000.0, "sequential": 5_000.0}, True),  # a tie keeps the one program
])
def test_the_faster_plan_is_chosen(rates, vmap):
    assert choose(rates) is vmap


def test_a_long_enough_group_probes_both_plans(home, monkeypatch):
    from pipeline.sweep import plan_probe as choose_module

    monkeypatch.setattr(choose_module, "REPAY", 0.0)  # any group repays the probe
    r = pipeline("sweep", "digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;1e-2)", "--plan", "auto-measure",
                 "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out.strip().splitlines()[-1])["plans"]["0"]
    rates = plan["member_steps_per_s"]
    assert set(rates) == {"population", "sequential"} and min(rates.values()) > 0
    assert plan["plan"] == ("population" if rates["population"] >= rates["sequential"] else "sequential")


def test_a_measured_sweep_records_its_choice(home):
    r = pipeline("sweep", "digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;1e-2;3e-2)", "--plan",
                 "auto-measure", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out.strip().splitlines()[-1])
    plan = summary["plans"]["0"]
    rates = plan["member_steps_per_s"]
    # 3 trials x 40 steps cannot repay probing the second plan: the population is measured alone.
    assert set(rates) == {"population"} and rates["population"] > 0
    assert plan["plan"] == "population" and plan["why"] == "too short to repay probing the sequential plan"
    assert summary["vmap"] is (plan["plan"] == "population") and not plan["forced"]
    saved = json.loads((Path(summary["sweep_dir"]) / "sweep.json").read_text())
    assert saved["plans"] == summary["plans"]
    forced = json.loads(pipeline("sweep", "digits_mlp", *TINY, "optimizer.learning_rate=choice(1e-3;1e-2)",
                                 "--no-vmap", "--json").out.strip().splitlines()[-1])
    assert forced["plans"]["0"] == {"plan": "sequential", "forced": True}
    assert pipeline("sweep", "digits_mlp", *TINY, "seed=range(2)", "--vmap", "--no-vmap").code == 2


@pytest.mark.parametrize("winner", ["population", "sequential"])
def test_the_probe_is_part_of_the_sweep_whichever_plan_wins(home, monkeypatch, winner):
    """The first population starts for real while it is probed: when the population wins it goes on
    from there, when the sequential plan wins everything it did is dropped. Either way the sweep's
    records equal the forced plan's exactly (a different number of probe calls changes nothing)."""
    from pipeline.sweep import plan_probe as choose_module

    monkeypatch.setattr(choose_module, "REPAY", 0.0)  # probe both plans
    monkeypatch.setattr(choose_module, "choose", lambda rates: winner == "population")
    space = ["steps=200", "eval_every=40", "optimizer.learning_rate=choice(1e-3;1e-2;3e-2)"]
    tiny = [a for a in TINY if not a.startswith(("steps=", "eval_every="))]
    measured = pipeline("sweep", "digits_mlp", *tiny, *space, "--plan", "auto-measure", "--json")
    assert measured.code == 0, measured.err
    summary = json.loads(measured.out.strip().splitlines()[-1])
    assert summary["plans"]["0"]["plan"] == winner
    forced = pipeline("sweep", "digits_mlp", *tiny, *space, "--vmap" if winner == "population" else "--no-vmap",
                      "--json")
    assert forced.code == 0, forced.err
    folders = [Path(json.loads(r.out.strip().splitlines()[-1])["sweep_dir"]) for r in (measured, forced)]
    tables = [pq.read_table(f / "trials.parquet").drop(["wall_s"]).to_pylist() for f in folders]
    assert tables[0] == tables[1]
    curves = [pq.read_table(f / "curves.parquet").sort_by([("trial", "ascending"), ("split", "ascending"),
                                                            ("name", "ascending"), ("step", "ascending")])
              for f in folders]
    assert curves[0].equals(curves[1])
    assert sorted(p.name for p in (folders[0] / "checkpoints").iterdir()) == ["g0-c0"]  # nothing of the probe left
