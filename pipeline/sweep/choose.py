"""Population or one member at a time: measured, not assumed.

A vmapped population runs all its members in one program; on an accelerator that is many
times faster than stepping them one after another, while on a few CPU cores whose every
step already keeps the cores busy it can be slower. Before a group runs, both plans take a
few calls of its first population (member states built afresh and thrown away), and the one
with more member-steps per second runs the sweep. The programs compiled for the probe are
the ones the group then uses, so the probe costs only the losing plan's compile and calls;
a group whose whole work would take less than ``REPAY`` times the population's compile is
not worth that, and runs as a population after probing it alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from pipeline.train.loop import Prepared, run_feed
from pipeline.train.population import Programs, SoloPopulation, VmapPopulation, solo_programs, stack, vmapped_programs
from pipeline.train.state import create_state

PROBE_CALLS = 3  # timed calls of each plan, after one that compiles and warms up
# The sequential plan is probed only when the group's work, at the population's measured rate,
# is this many times the population's compile time: a short sweep could never repay the probe.
REPAY = 10.0


@dataclass
class Plan:
    vmap: bool
    member_steps_per_s: dict[str, float]  # "population" and "sequential"
    programs: Programs | None = None  # the chosen plan's compiled programs, for the group to reuse
    why: str = ""  # set when only the population was probed

    def record(self) -> dict[str, Any]:
        out = {"plan": "population" if self.vmap else "sequential",
               "member_steps_per_s": {k: round(v, 1) for k, v in self.member_steps_per_s.items()}}
        return {**out, "why": self.why} if self.why else out


def choose(rates: dict[str, float]) -> bool:
    """True (a vmapped population) unless stepping members one at a time measured faster."""
    return rates["population"] >= rates["sequential"]


def measure(prep: Prepared, configs: list[Any], steps_per_call: int, total_steps: int,
            group_member_steps: int) -> Plan:
    """Member-steps per second of both plans on these members (their configs), fresh states.

    The population goes first; the sequential plan is probed only when the group's work
    (``group_member_steps`` at the population's rate) is long enough to repay its compile.
    """
    states = [create_state(cfg, prep.info, total_steps)[1] for cfg in configs]
    seeds = [cfg.resolved_data_seed for cfg in configs]
    live = np.ones(len(configs), bool)
    rates, programs = {}, {}
    stream = prep.reader is not None
    for name, make in (("population", vmapped_programs), ("sequential", solo_programs)):
        programs[name] = make(prep.spec, steps_per_call, stream=stream)
        feed = run_feed(prep, 0, seeds, len(set(seeds)), own_reader=False)
        try:
            if name == "population":
                pop = VmapPopulation(programs[name], stack(states), live, feed, 0)
            else:
                pop = SoloPopulation(programs[name], jax.device_get(states), live, feed, 0)
            start = time.perf_counter()
            jax.block_until_ready(pop.step())  # compiles
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(PROBE_CALLS):
                handle = pop.step()
            jax.block_until_ready(handle)
            rates[name] = len(configs) * steps_per_call * PROBE_CALLS / (time.perf_counter() - start)
        finally:
            feed.close()
        if name == "population" and group_member_steps / rates[name] < REPAY * compile_s:
            return Plan(True, rates, programs[name], why="too short to repay probing the sequential plan")
    vmap = choose(rates)
    return Plan(vmap, rates, programs["population" if vmap else "sequential"])
