"""Population or one member at a time, timed: ``--plan auto-measure`` (the default ``auto`` never
times; ``plan_rule.py``). The two plans agree only to float32 rounding, so a timed choice makes a
sweep's numbers depend on the machine's load; the choice is recorded in ``sweep.json`` and a resumed
sweep keeps it rather than timing again.

A vmapped population runs all its members in one program; on an accelerator that is many
times faster than stepping them one after another, while on a few CPU cores whose every
step already keeps the cores busy it can be slower. Before a group commits to a plan, its
first population starts as a vmapped population, for real, and a few of its calls are timed;
then, when the group's work is long enough to repay it, the same members are stepped a few
calls one at a time with the solo program, from fresh states thrown away after. The plan with
more member-steps per second runs the group. When the population wins (always, for a group too
short to repay the second probe) its probe was no detour: the first population simply goes
on from where the probe left it. Only a sequential win costs the population's probe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from pipeline.train.population import SoloPopulation
from pipeline.train.prepare import Prepared
from pipeline.train.programs import Programs, solo_programs
from pipeline.train.session import open_feed
from pipeline.train.state import create_state

PROBE_CALLS = 3  # timed calls of each plan, after one that compiles and warms up
# The sequential plan is probed only when the group's work, at the population's measured rate,
# is this many times the population's compile time: a short sweep could never repay the probe.
REPAY = 10.0


@dataclass
class Plan:
    vmap: bool
    member_steps_per_s: dict[str, float]  # "population" and "sequential"
    programs: Programs | None = None  # the sequential plan's compiled programs, when it won
    why: str = ""  # set when only the population was probed

    def record(self) -> dict[str, Any]:
        out = {"plan": "population" if self.vmap else "sequential", "rule": "auto-measure",
               "member_steps_per_s": {k: round(v, 1) for k, v in self.member_steps_per_s.items()}}
        return {**out, "why": self.why} if self.why else out


def choose(rates: dict[str, float]) -> bool:
    """True (a vmapped population) unless stepping members one at a time measured faster."""
    return rates["population"] >= rates["sequential"]


def measure(prep: Prepared, first: Any, configs: list[Any], steps_per_call: int, total_steps: int,
            group_member_steps: int) -> Plan:
    """Member-steps per second of the group's first population (``first``, a vmapped
    ``PopulationRun`` about to start, whose engine the probe drives) and, when the group's work is
    long enough to repay its compile, of its members stepped one at a time from fresh states."""
    engine = first.engine
    start = time.perf_counter()
    engine.execute(max_calls=1)  # compiles; every call's results are read back before it returns
    compile_s = time.perf_counter() - start
    before, start = engine.step, time.perf_counter()
    engine.execute(max_calls=PROBE_CALLS)
    calls = (engine.step - before) // steps_per_call
    if calls == 0:
        return Plan(True, {}, why="finished while it was probed")
    rates = {"population": len(configs) * steps_per_call * calls / (time.perf_counter() - start)}
    if group_member_steps / rates["population"] < REPAY * compile_s:
        return Plan(True, rates, why="too short to repay probing the sequential plan")
    programs = solo_programs(prep.spec, steps_per_call, stream=prep.reader is not None)
    rates["sequential"] = _sequential_rate(prep, programs, configs, steps_per_call, total_steps)
    vmap = choose(rates)
    return Plan(vmap, rates, None if vmap else programs)


def _sequential_rate(prep: Prepared, programs: Programs, configs: list[Any], steps_per_call: int,
                     total_steps: int) -> float:
    """The members stepped one at a time, from fresh states that are thrown away after."""
    states = [create_state(cfg, prep.info, total_steps)[1] for cfg in configs]
    seeds = [cfg.resolved_data_seed for cfg in configs]
    feed = open_feed(prep, 0, seeds, len(set(seeds)), own_reader=False)
    try:
        pop = SoloPopulation(programs, jax.device_get(states), np.ones(len(configs), bool), feed, 0)
        jax.block_until_ready(pop.step())  # compiles
        start = time.perf_counter()
        for _ in range(PROBE_CALLS):
            handle = pop.step()
        jax.block_until_ready(handle)
        return len(configs) * steps_per_call * PROBE_CALLS / (time.perf_counter() - start)
    finally:
        feed.close()
