"""How the implementations of one point are set up, warmed and timed, and what a failure leaves.

Two schedules: ``time_together`` sets every runner up, then times them round-robin (one
round each in turn, so a burst of load from other processes hits them alike, and their
ratios can be taken round by round: ``timing.paired_ratio``);
``time_each`` sets up, times and frees one runner after another (a model too large for
all of them at once, or work that disturbs its neighbours, such as a reader's prefetch
thread). Either way an implementation that raises is recorded (``failed`` with the first
line of the error, or ``out of memory``) and freed, and the others go on; past the
deadline, runners not yet set up are recorded as ``skipped`` and the timed rounds stop
after the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.bench.measure import FAILED, OUT_OF_MEMORY, Measurement, Runner, is_out_of_memory, missing
from pipeline.bench.timing import Budget, Deadline, RoundRobin, cycle_order, past, time_alone

SKIPPED = "skipped"
BUDGET_SPENT = "time budget spent"


def one_line(exc: BaseException) -> str:
    """The first line of an error, as ``Type: message`` (at most 300 characters)."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def failure(impl: str, exc: BaseException, needs: str = "") -> Measurement:
    if is_out_of_memory(exc):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return missing(impl, OUT_OF_MEMORY, f"{needs}; {first}" if needs else first)
    return missing(impl, FAILED, one_line(exc))


def close_quietly(runner: Runner) -> None:
    try:
        runner.close()
    except Exception:  # noqa: BLE001 - freeing a half-built runner must not end the suite
        pass


def guarded(runner: Runner, done: dict[str, Measurement], needs: str, fn: Callable[[], object]) -> bool:
    """Run ``fn``; on an exception record the runner as failed (or out of memory) and free it."""
    try:
        fn()
        return True
    except Exception as exc:  # one implementation failing must not stop the others
        done[runner.impl] = failure(runner.impl, exc, needs)
        close_quietly(runner)
        return False


def _set_up(runner: Runner, done: dict[str, Measurement], needs: str, deadline: Deadline | None,
            before_setup: Callable[[Runner], None] | None, echo: Callable[[str], None], note: str) -> bool:
    if past(deadline):
        done[runner.impl] = missing(runner.impl, SKIPPED, BUDGET_SPENT)
        return False
    if deadline is not None and not deadline.room_to_set_up(runner.impl):
        done[runner.impl] = missing(runner.impl, SKIPPED, f"{BUDGET_SPENT}: {max(deadline.left(), 0):.0f} s left, "
                                    f"its set-up took {deadline.setup_s[runner.impl]:.0f} s before")
        return False
    echo(f"  {runner.impl}: {note}")

    def setup() -> None:
        if before_setup is not None:
            before_setup(runner)
        start = time.perf_counter()
        runner.setup()
        if deadline is not None:
            deadline.set_up_took(runner.impl, time.perf_counter() - start)

    return guarded(runner, done, needs, setup)


def _finish(runner: Runner, done: dict[str, Measurement], needs: str, timing_of: Callable[[], object]) -> None:
    guarded(runner, done, needs, lambda: done.__setitem__(runner.impl, runner.result(timing_of())))
    close_quietly(runner)


def time_together(runners: list[Runner], budget: Budget, done: dict[str, Measurement], echo: Callable[[str], None],
                  deadline: Deadline | None = None, needs: str = "",
                  before_setup: Callable[[Runner], None] | None = None) -> None:
    """Set every runner up, warm each, then time them round-robin; results land in ``done``."""
    live = [r for r in runners if _set_up(r, done, needs, deadline, before_setup, echo, "setting up")]
    rr = RoundRobin(budget)
    live = [r for r in live if guarded(r, done, needs, lambda r=r: rr.warm(r.impl, r))]
    rr.balance([r.impl for r in live])
    if live:
        echo(f"  timing {', '.join(r.impl for r in live)} round-robin")
    for i in range(budget.rounds):
        if i and past(deadline):
            break
        timed = {r.impl: guarded(r, done, needs, lambda r=r: rr.one_round(r.impl, r)) for r in cycle_order(live, i)}
        live = [r for r in live if timed[r.impl]]
    for r in live:
        _finish(r, done, needs, lambda r=r: rr.timing(r.impl, r.steps_per_unit))


def time_each(runners: list[Runner], budget: Budget, done: dict[str, Measurement], echo: Callable[[str], None],
              deadline: Deadline | None = None, needs: str = "",
              before_setup: Callable[[Runner], None] | None = None, note: str = "setting up and timing alone") -> None:
    """Set up, time and free one runner after another; results land in ``done``."""
    for r in runners:
        if _set_up(r, done, needs, deadline, before_setup, echo, note):
            _finish(r, done, needs, lambda r=r: time_alone(r, budget, deadline))
