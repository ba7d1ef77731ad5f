"""How long one compiled call lasts: K kept to about ``CALL_SECONDS`` of measured time, so that
Ctrl-C and SIGTERM (acted on at call boundaries) stop a run within seconds on any model.

``steps_per_call.py`` picks K0 from the host's overhead and a floor on the step's time; that floor
can be far off (a loaded machine, a big model on a CPU: 100 steps once took 107 s). So the engine
times every call it reads back and lowers K when a call runs over ``CALL_SECONDS``, raising it back
(up to K0) when calls become short again.

K only groups steps into calls: the data order and every step are the same whatever K is (a step is
one iteration of the call's scan), so the results are identical bit for bit (tests/train/
test_call_time.py). Two rules keep that true and the compiles few:

* K takes values on a ladder of divisors of K0, each dividing the one above it (``ladder``): K0,
  K0 / p, ... down to 1, p the smallest prime factor at each rung (halving, where two divides). Any
  rung divides what K0 divides (the run, ``eval_every``, ``checkpoint_every``, the rungs of halving),
  so evaluations and checkpoints land on their steps; a call of K starts at a multiple of K
  (``k_at``), so a larger K waits for a step it divides, calls of a K already compiled filling the
  way. An unrolled scan (``scan_unroll``) keeps K a multiple of its unroll, whose programs give the
  same bits.
* Each K is its own compiled program. The ladder's rungs are factors of two (or more) apart and K
  rises only when the larger call is predicted under half the bound, so a run compiles two or three
  programs, not one per measurement.

A run's first call is a probe of the ladder's smallest K (a run does not wait 60 s on a slow first
call to learn that it is slow); a sweep's population starts at its group's K. A K fixed by the user
(``steps_per_call=N``) is used as set: no probe, no bound.
"""

from __future__ import annotations

import sys

CALL_SECONDS = 2.0
RAISE_BELOW = 0.5  # K rises only where the larger call is predicted under this share of the bound
SAMPLES = 3  # recent per-step times that a rise must agree with


def _smallest_factor(n: int) -> int:
    return next(p for p in range(2, n + 1) if n % p == 0)


def ladder(k0: int, unroll: int = 1) -> list[int]:
    """K0 and its divisors a call may take, largest first, each dividing the one before."""
    unit = unroll if unroll > 1 and k0 % unroll == 0 else 1
    rungs, n = [k0 // unit], k0 // unit
    while n > 1:
        n //= _smallest_factor(n)
        rungs.append(n)
    return [r * unit for r in rungs]


class CallLength:
    """The K of each call: ``k_at(step)`` before a dispatch, ``observe(k, seconds)`` after a readback."""

    def __init__(self, k0: int, unroll: int = 1, adaptive: bool = True, probe: bool = True, speak: bool = True):
        self.rungs = ladder(k0, unroll)
        self.speak = speak  # process 0 says so when even the smallest K runs over
        self.adaptive = adaptive
        self.target = self.rungs[-1] if adaptive and probe else k0  # the largest K wanted now
        self.samples: list[float] = []  # seconds per step, since the last change of target
        self.settled = not (adaptive and probe)  # False until the probe has been measured
        self.warned = False
        self.used: set[int] = set()  # the K of every call so far: each a compiled program

    def k_at(self, step: int) -> int:
        """The K of a call starting at ``step``: the target where it divides ``step``; else, until it does,
        the largest K already used that divides it (no compile on the way up); else the largest rung."""
        fitting = [r for r in self.rungs if r <= self.target and step % r == 0]
        k = next((r for r in fitting if r == self.target or r in self.used), fitting[0])
        self.used.add(k)
        return k

    def observe(self, k: int, seconds: float) -> None:
        """A call of ``k`` steps took ``seconds`` (readback to readback, compile excluded)."""
        if self.adaptive:
            self.samples = (self.samples + [seconds / k])[-SAMPLES:]

    def decide(self) -> int:
        """The target after the samples so far (the engine shares process 0's with the others)."""
        if not self.adaptive or not self.samples:
            return self.target
        latest, slowest = self.samples[-1], max(self.samples)
        fits = [r for r in self.rungs if r * latest <= CALL_SECONDS]
        if not self.settled:  # the probe: straight to the largest rung that fits
            wanted = fits[0] if fits else self.rungs[-1]
        elif not fits or fits[0] < self.target:  # over the bound: down at once
            wanted = fits[0] if fits else self.rungs[-1]
        else:
            roomy = [r for r in self.rungs if r * slowest <= RAISE_BELOW * CALL_SECONDS]
            wanted = max(self.target, roomy[0]) if roomy and len(self.samples) == SAMPLES else self.target
        if not fits and self.settled:  # the probe's time may hold a first call's one-off costs: not said on it
            self.warn(latest)
        self.settled = True
        return wanted

    def set_target(self, wanted: int) -> None:
        if wanted != self.target:
            self.target, self.samples = wanted, []

    def warn(self, step_seconds: float) -> None:
        """Once: a call of the smallest K still runs over the bound."""
        if self.warned or not self.speak:
            return
        self.warned = True
        k = self.rungs[-1]
        print(f"note: a call of {k} step{'s' if k > 1 else ''} takes {k * step_seconds:.1f} s, over the "
              f"{CALL_SECONDS:g} s a call aims at, and this run's steps cannot be split finer; Ctrl-C and "
              "SIGTERM act when the call in flight ends", file=sys.stderr)
