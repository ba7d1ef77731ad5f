"""Which plan runs a group (a vmapped population, or one member at a time): decided, not timed.

The two plans agree only to float32 rounding, so a plan chosen by timing made a sweep's numbers
depend on the machine's load (a fresh and a resumed sweep differed). ``--plan`` says how a group's
plan is chosen, and the choice is recorded in ``sweep.json`` (``plans``) and reused by a resumed or
re-run sweep of the same folder:

* ``population`` / ``sequential`` (``--vmap`` / ``--no-vmap``): forced;
* ``auto`` (the default): from the hardware and the work, never from a clock (``auto_plan``);
* ``auto-measure``: timed on the group's first population (``plan_probe.py``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pipeline.errors import PipelineError

AUTO, MEASURE, POPULATION, SEQUENTIAL = "auto", "auto-measure", "population", "sequential"
PLANS = (AUTO, MEASURE, POPULATION, SEQUENTIAL)
FORCED = (POPULATION, SEQUENTIAL)

# On CPU (docs/sweeps.md "Plans" has the measurements this comes from): a vmapped population wins
# when its members' steps are small enough that the per-call and per-step host work they share is
# a large part of a step, and loses to one member at a time when each step's arithmetic already
# keeps the cores busy. The population runs when its members' FLOPs per step, per core, are at most
# CPU_POPULATION_FLOPS_PER_CORE (a population of members of larger steps steps them one at a time).
CPU_POPULATION_FLOPS_PER_CORE = 4e6


class PlanError(PipelineError):
    """A ``--plan`` that contradicts what this sweep recorded, or that this kind of sweep cannot run."""


def requested(opts: Any) -> str:
    """The plan a ``SweepOptions`` asks for: ``vmap`` (``--vmap``/``--no-vmap``, or a caller's
    ``SweepOptions(vmap=...)``) forces one, else ``plan``."""
    if opts.vmap is not None:
        return POPULATION if opts.vmap else SEQUENTIAL
    return getattr(opts, "plan", AUTO)


def cores() -> int:
    """The CPU cores this process may run on (its affinity where the system says, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_plan(backend: str, cpu_cores: int, member_flops: float, members: int) -> tuple[bool, str]:
    """(vmap, why) for a population of ``members`` whose train step costs ``member_flops`` each: a pure
    function of the hardware (``backend``: ``jax.default_backend()``; ``cpu_cores``) and the work."""
    if members <= 1:
        return False, "one member"
    if backend != "cpu":
        return True, f"an accelerator ({backend}) steps a population in one program"
    per_core = member_flops / max(1, cpu_cores)
    if per_core <= CPU_POPULATION_FLOPS_PER_CORE:
        return True, (f"cpu: {member_flops:.3g} FLOPs a member step over {cpu_cores} cores is at most "
                      f"{CPU_POPULATION_FLOPS_PER_CORE:.3g} a core")
    return False, (f"cpu: {member_flops:.3g} FLOPs a member step over {cpu_cores} cores is more than "
                   f"{CPU_POPULATION_FLOPS_PER_CORE:.3g} a core")


def member_flops(prep: Any) -> float:
    """FLOPs of one member's train step: XLA's count of the lowered step (traced, not compiled),
    or 6 x parameters x batch where the backend counts none."""
    import jax

    from pipeline.train.step import train_step

    b = prep.spec.batch_size
    x = jax.ShapeDtypeStruct((b, *prep.info.feature_shape), prep.info.feature_dtype)
    y = jax.ShapeDtypeStruct((b, *prep.info.label_shape), prep.info.label_dtype)
    if prep.train is not None:  # the arrays the step gathers from: their stored dtypes
        x = jax.ShapeDtypeStruct(x.shape, prep.train.x.dtype)
        y = jax.ShapeDtypeStruct(y.shape, prep.train.y.dtype)
    try:
        cost = jax.jit(functools.partial(train_step, prep.spec)).lower(prep.state, x, y).cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops = float((cost or {}).get("flops", 0.0))
    except Exception:  # a backend without cost analysis: the estimate steps_per_call.py uses
        flops = 0.0
    if flops > 0:
        return flops
    params = sum(leaf.size for leaf in jax.tree.leaves(prep.state.params))
    return 6.0 * params * b


def decide_auto(prep: Any, members: int) -> tuple[bool, dict[str, Any]]:
    """``--plan auto`` for a population of ``members`` on this machine: (vmap, the record)."""
    import jax

    backend = jax.default_backend()
    flops = member_flops(prep) if backend == "cpu" and members > 1 else None
    vmap, why = auto_plan(backend, cores(), flops or 0.0, members)
    record: dict[str, Any] = {"plan": POPULATION if vmap else SEQUENTIAL, "forced": False, "rule": AUTO, "why": why}
    return vmap, record


def nothing_to_measure(kind: str) -> PlanError:
    return PlanError(f"--plan auto-measure times a grid or random sweep's first population; {kind} runs its "
                     "populations without a probe: give --plan auto, population or sequential")


def check_recorded(recorded: dict[str, dict[str, Any]], opts: Any, where: Any) -> None:
    """A forced ``--plan`` that differs from a plan this sweep folder recorded: one line."""
    asked = requested(opts)
    if asked not in FORCED:
        return
    for key, plan in sorted(recorded.items()):
        if plan.get("plan") in FORCED and plan["plan"] != asked:
            raise PlanError(f"--plan {asked} contradicts sweep folder {where}, whose group {key} ran as "
                            f"{plan['plan']}; resume it with --plan auto (the recorded plan) or --plan {plan['plan']}")


def fixed_plan(opts: Any, recorded: dict[str, Any] | None, prep: Any, members: int, kind: str,
               **extra: Any) -> tuple[bool, dict[str, Any]]:
    """(vmap, the record) of a sweep that runs populations without probing them (a search's rounds,
    PBT, ``--refill``; ``kind`` names it): the recorded plan when there is one, else the forced or
    ``auto`` one. ``--plan auto-measure`` has nothing to measure there: one line."""
    asked = requested(opts)
    if asked == MEASURE:
        raise nothing_to_measure(kind)
    if recorded is not None:
        if asked in FORCED and recorded.get("plan") in FORCED and recorded["plan"] != asked:
            raise PlanError(f"--plan {asked} contradicts this sweep folder, whose {kind} ran as {recorded['plan']}; "
                            f"resume it with --plan auto (the recorded plan) or --plan {recorded['plan']}")
        return recorded["plan"] == POPULATION, recorded
    if asked in FORCED:
        return asked == POPULATION, {"plan": asked, "forced": True, **extra}
    vmap, record = decide_auto(prep, members)
    return vmap, {**extra, **record}  # the rule's own "why"
