"""Sweep points: a population of members stepped in one vmapped program against one at a time.

The members differ as a sweep's trials do (learning rates log-spaced from 1e-4 to 1e-1, four
data seeds when the population divides by four); ``population`` steps them all in the
sweep's vmapped program, ``sequential`` steps each with the solo program of ``pipeline
train`` (``pipeline sweep --no-vmap``). Both are the sweep's own classes, timed round-robin
in steady state: one unit is one call, K steps of every member, so steps/s are
member-steps/s. Compilation is the first call (``compile_s``), as in the sweep's own probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from pipeline.bench.loop_points import measure_ways
from pipeline.bench.measure import Measurement, Runner
from pipeline.bench.points import Point
from pipeline.bench.timing import Deadline
from pipeline.bench.workload import Workload
from pipeline.config import apply_overrides
from pipeline.train.parts import create_state


def member_overrides(count: int) -> list[list[str]]:
    """Each member's learning rate and seed: log-spaced rates x 4 seeds (or one seed)."""
    seeds = 4 if count % 4 == 0 else 1
    rates = np.logspace(-4, -1, count // seeds)
    return [[f"optimizer.learning_rate={rate:.6g}", f"seed={seed}"] for rate in rates for seed in range(seeds)]


class PopulationRunner(Runner):
    def __init__(self, workload: Workload, vmap: bool):
        self.impl = "population" if vmap else "sequential"
        super().__init__()
        self.workload, self.vmap, self.pop, self.feed = workload, vmap, None, None

    def setup(self) -> None:
        # The sweep's own pieces, imported here: a sweep engine that changes shape fails this point alone.
        from pipeline.train.parts import (
            SoloPopulation,
            VmapPopulation,
            open_feed,
            prepare,
            solo_programs,
            stack,
            vmapped_programs,
        )

        cfg = self.workload.cfg
        prep = prepare(cfg, self.workload.store)
        configs = [apply_overrides(cfg, o) for o in member_overrides(self.workload.point.population)]
        states = [create_state(c, prep.info, prep.total_steps)[1] for c in configs]
        seeds = [c.resolved_data_seed for c in configs]
        k = prep.steps_per_call
        stream = prep.reader is not None
        self.feed = open_feed(prep, 0, seeds, len(set(seeds)), own_reader=False)
        live = np.ones(len(configs), bool)
        if self.vmap:
            programs = vmapped_programs(prep.spec, k, stream=stream)
            self.pop = VmapPopulation(programs, stack(states), live, self.feed, 0)
        else:
            programs = solo_programs(prep.spec, k, stream=stream)
            self.pop = SoloPopulation(programs, jax.device_get(states), live, self.feed, 0)
        self.steps_per_unit = k * len(configs)
        self.m.extra = {"members": len(configs), "steps_per_call": k}
        start = time.perf_counter()
        self.run(1)  # compiles
        self.m.compile_s = time.perf_counter() - start

    def run(self, units: int) -> None:
        handle = None
        for _ in range(units):
            handle = self.pop.step()
        jax.block_until_ready(handle)

    def result(self, timing):
        m = super().result(timing)
        m.steps_per_call = self.m.extra["steps_per_call"]
        return m

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
        self.pop = self.feed = None


def measure_population(point: Point, workload: Workload, peers: tuple[str, ...], echo: Callable[[str], None],
                       deadline: Deadline | None = None) -> list[Measurement]:
    runners = {"population": lambda: PopulationRunner(workload, vmap=True),
               "sequential": lambda: PopulationRunner(workload, vmap=False)}
    return measure_ways(point, runners, peers, echo, deadline, together=True)
