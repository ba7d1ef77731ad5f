"""How many steps one compiled call runs (K): enough that the host's per-call work is a small share.

Each call costs the host a fixed overhead (making and placing the call's row indices,
dispatching, reading the previous call's metrics back), measured here on this machine. A
step's time is estimated from the model's size: 6 x parameters x batch FLOPs and ~40 bytes
of memory traffic per parameter (Adam's reads and writes), at a device's best rates, so the
estimate is a lower bound and K errs on the large side. K is then the smallest count that
keeps the overhead under ``OVERHEAD_SHARE`` of a call, between ``MIN_K`` and ``MAX_K``.
``choose_steps_per_call`` then takes the largest K up to that target that divides the run, the
evaluation and the checkpoint intervals. That K is a ceiling: ``call_length.py`` lowers it while
the run goes, from measured call times, so that a call lasts about 2 s at most (Ctrl-C).

Inside a call the K steps are a ``lax.scan``, whose every iteration has a cost of its own (the
loop's condition, copies of part of the carry): about a microsecond on a CPU, a few percent of a
tiny model's step. ``scan_unroll`` unrolls such steps by two, which halves that cost, when the run
is long enough to earn back the larger program's extra compile time.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from pipeline.config import Config

AUTO_STEPS_PER_CALL = 100  # the target when K is not measured
OVERHEAD_SHARE = 0.02
MIN_K, MAX_K = 100, 1000
UNROLL_STEP_BELOW_S = 20e-6  # a step whose floor is under this is bound by the scan's per-iteration cost
UNROLL_RUN_FROM = 100_000  # ...and a run this long saves more (~0.7 us a step) than the compile adds (~0.1 s)
# Best sustained rates (FLOP/s, bytes/s) by backend: generous, so that the step estimate is a floor.
RATES = {"cpu": (1e11, 5e10), "gpu": (1e15, 5e12), "tpu": (1e15, 5e12)}


def host_overhead_seconds(batch: int, repeats: int = 20) -> float:
    """The host's fixed cost of one call: indices placed on the device, a dispatch, a small readback."""
    bump = jax.jit(lambda idx: idx + 1)
    idx = np.zeros((MIN_K, batch), np.int32)
    jax.block_until_ready(bump(jax.device_put(idx)))  # compiled once, outside the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = bump(jax.device_put(np.random.default_rng(0).permutation(idx.size).reshape(idx.shape)))
        jax.device_get(out[0, 0])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_seconds_floor(params: int, batch: int) -> float:
    flop_rate, byte_rate = RATES.get(jax.default_backend(), RATES["gpu"])
    return max(6.0 * params * batch / flop_rate, 40.0 * params / byte_rate)


def target_steps_per_call(params: int, batch: int) -> int:
    """The K to aim for: overhead / (share x step time), within [MIN_K, MAX_K]."""
    wanted = host_overhead_seconds(batch) / (OVERHEAD_SHARE * step_seconds_floor(params, batch))
    return int(min(MAX_K, max(MIN_K, math.ceil(wanted))))


def scan_unroll(params: int, batch: int, total_steps: int) -> int:
    """How many steps one iteration of a call's scan runs: 2 for a tiny step in a long run, else 1."""
    tiny = step_seconds_floor(params, batch) < UNROLL_STEP_BELOW_S
    return 2 if tiny and total_steps >= UNROLL_RUN_FROM else 1


def choose_steps_per_call(cfg: Config, steps: int, target: int = AUTO_STEPS_PER_CALL) -> int:
    """The largest K <= target (``steps_per_call`` when set) dividing the run, the evaluation and
    the checkpoint intervals.

    A fixed K means one compiled program for the whole run, and evaluations and step-counted
    checkpoints land exactly on their steps (time-based checkpoints take any call boundary).
    """
    target = cfg.steps_per_call or target
    common = math.gcd(steps, min(cfg.eval_every, steps), min(cfg.checkpoint_every or steps, steps))
    return max(k for k in range(1, min(target, common) + 1) if common % k == 0)
