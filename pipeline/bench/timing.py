"""Steady-state timing: rounds of work, each closed by waiting for the device.

A round runs ``n`` units (a unit is one dispatch: one step, or K scanned steps) and ends
with ``block_until_ready`` (or the peer's own synchronisation), so a round's wall time is
the time the steps really took. After warm-up, the round size is chosen so a round lasts
about ``round_s``. The median over rounds is the figure; the spread says how noisy the
machine was. Several implementations are timed round-robin: in each cycle one round of
each, the cycle starting one implementation further on every time (so none always runs
right after another's after-effects). Their ratio is the median over cycles of the ratio
of their rounds in that cycle (``paired_ratio``): rounds next to each other in time share
the machine's load, so a burst of load from other processes cancels out of the ratio
instead of moving it (on a shared 2-core machine, the ratio of two independent medians
moved by +-5% between runs; the paired one, by about half that).
Each round's CPU time (every thread of this process) is kept beside its wall time. With a
deadline, rounds after the first stop once it has passed: a short budget gives a rougher
figure instead of none.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Budget:
    """How long to measure: warm-up rounds, timed rounds, and the target length of a round."""

    warmup: int = 2
    rounds: int = 7
    round_s: float = 0.25
    max_units: int = 10_000  # cap on units per round, whatever round_s asks


@dataclass(frozen=True)
class Timing:
    """Seconds per step over the timed rounds."""

    median: float
    p25: float
    p75: float
    fastest: float
    slowest: float
    steps: int  # timed steps in all rounds
    rounds: int
    cpu: float | None = None  # median CPU seconds per step of this process (all its threads)
    samples: tuple[float, ...] = ()  # seconds per step of each timed round, in order
    together: int = 0  # the round-robin that timed it: round i of each of its implementations is one cycle

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.p75 - self.p25) / self.median if self.median > 0 else 0.0


class Timed(Protocol):
    steps_per_unit: int

    def run(self, units: int) -> None:
        """Run ``units`` dispatches and wait until the device has finished them."""


def summarize(per_step: list[float]) -> tuple[float, float, float, float, float]:
    ordered = sorted(per_step)
    if len(ordered) >= 4:
        q = statistics.quantiles(ordered, n=4, method="inclusive")
        p25, p75 = q[0], q[2]
    else:
        p25, p75 = ordered[0], ordered[-1]
    return statistics.median(ordered), p25, p75, ordered[0], ordered[-1]


class Deadline:
    """A ``time.time()`` after which nothing new starts, and how long each implementation's
    set-up has taken so far: one that could not finish before the deadline is not started,
    so a run ends within its budget give or take one set-up."""

    def __init__(self, at: float):
        self.at = at
        self.setup_s: dict[str, float] = {}

    def left(self) -> float:
        return self.at - time.time()

    def room_to_set_up(self, impl: str) -> bool:
        return self.left() > self.setup_s.get(impl, 0.0)

    def set_up_took(self, impl: str, seconds: float) -> None:
        self.setup_s[impl] = max(seconds, self.setup_s.get(impl, 0.0))


def past(deadline: Deadline | None) -> bool:
    """Whether the deadline has passed (None: there is none)."""
    return deadline is not None and deadline.left() < 0


def _clock(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return max(time.perf_counter() - start, 1e-9)


def _resize(units: int, took: float, budget: Budget) -> int:
    return int(min(budget.max_units, max(1, round(units * budget.round_s / took))))


MIN_PAIRS = 3  # fewer paired rounds than this: the ratio of the medians instead
_round_robins = itertools.count(1)


def paired_ratio(mine: Timing, theirs: Timing) -> float | None:
    """How much faster ``mine`` is than ``theirs``: the median over cycles of their round's time
    per step over mine, for two implementations timed in one round-robin (None otherwise)."""
    if not mine.together or mine.together != theirs.together:
        return None
    pairs = [t / m for m, t in zip(mine.samples, theirs.samples)]  # a runner that failed has fewer rounds
    return statistics.median(pairs) if len(pairs) >= MIN_PAIRS else None


def cycle_order(names: list, cycle: int) -> list:
    """The order of one round-robin cycle: each cycle starts one implementation further on."""
    start = cycle % len(names) if names else 0
    return names[start:] + names[:start]


class RoundRobin:
    """Warm up and size each implementation, then time one round of each in turn."""

    def __init__(self, budget: Budget):
        self.id = next(_round_robins)
        self.budget = budget
        self.units: dict[str, int] = {}
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.unit_s: dict[str, float] = {}  # seconds per unit in the last warm-up round

    def warm(self, name: str, timed: Timed) -> None:
        took = _clock(lambda: timed.run(1))
        units = _resize(1, took, self.budget)
        self.unit_s[name] = took
        for _ in range(max(self.budget.warmup - 1, 0)):
            took = _clock(lambda u=units: timed.run(u))
            self.unit_s[name] = took / units
            units = _resize(units, took, self.budget)
        self.units[name] = units
        self.samples[name] = []
        self.cpu[name] = []

    def balance(self, names: list[str]) -> None:
        """Give every implementation's rounds one length: ``round_s``, or one unit of the slowest
        when that is longer (a call of K steps can outlast ``round_s``), so that the rounds paired
        in a cycle cover equal stretches of the machine's load."""
        target = max([self.budget.round_s, *(self.unit_s[n] for n in names)])
        for name in names:
            self.units[name] = int(min(self.budget.max_units, max(1, round(target / self.unit_s[name]))))

    def one_round(self, name: str, timed: Timed) -> None:
        units = self.units[name]
        cpu = time.process_time()
        took = _clock(lambda: timed.run(units))
        steps = units * timed.steps_per_unit
        self.samples[name].append(took / steps)
        self.cpu[name].append((time.process_time() - cpu) / steps)

    def timing(self, name: str, steps_per_unit: int) -> Timing:
        per_step = self.samples[name]
        median, p25, p75, fastest, slowest = summarize(per_step)
        steps = self.units[name] * steps_per_unit * len(per_step)
        return Timing(median, p25, p75, fastest, slowest, steps, len(per_step), statistics.median(self.cpu[name]),
                      tuple(per_step), self.id)


def time_alone(timed: Timed, budget: Budget, deadline: Deadline | None = None) -> Timing:
    """Warm-up and timed rounds of one implementation (at least one round, whatever the deadline)."""
    rr = RoundRobin(budget)
    rr.warm("it", timed)
    for i in range(budget.rounds):
        if i and past(deadline):
            break
        rr.one_round("it", timed)
    return rr.timing("it", timed.steps_per_unit)
