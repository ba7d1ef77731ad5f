"""The one training engine: K compiled steps a call for P members, a run being P = 1.

The host never waits on the call it just dispatched: it reads back the metrics of call N
while call N+1 runs. K, the steps of a call, may change between calls (``call_length.py``: about
2 s a call at most, so a Ctrl-C is acted on within seconds); it never changes what is computed. At
evaluations and checkpoints it catches up, records every live member, decides per member (best so
far, early stopping, divergence, a halving rung) and checkpoints, all through its ``Session``
(records, hooks, the feed, the stop flag).
``pipeline train`` and ``pipeline sweep`` both drive this loop; they differ only in the
``Policy`` they hand it and in how they configure the session and the population.

With a ``Refill`` (``slots.py``), a sweep's stopped members' slots take the next trials: each member
then counts its own steps from its slot's offset, and its rungs are decided asynchronously (ASHA).
Without one, every offset is 0 and every member stands at the engine's step.

Several processes run the same loop in step. What could differ between them is agreed at each
call boundary (``pipeline.distributed.CallAgreement``, only when there are several): a
checkpoint by the clock is process 0's decision, and a Ctrl-C or SIGTERM on any process stops
all of them at the same step. The decisions taken at an evaluation (best so far, early
stopping, halving) come from metrics every process holds identically; process 0's are taken
all the same (``share``), so no process can step a member another has stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import distributed
from pipeline.config import ConfigError
from pipeline.errors import PipelineError
from pipeline.hooks import HookFailed
from pipeline.train.call_length import CallLength
from pipeline.train.checkpoint import checkpoint_meta, keep_copy
from pipeline.train.evaluation import Bookkeeping, finalize
from pipeline.train.selection import Selection
from pipeline.train.session import Session
from pipeline.train.slots import Refill

FLUSH_SECONDS = 5.0


class NonFiniteLoss(PipelineError):
    pass


class Interrupted(PipelineError):
    """Ctrl-C or SIGTERM: a checkpoint is saved and the work can be resumed."""

    exit_code = 130


@dataclass(frozen=True)
class Policy:
    total: int
    steps_per_call: int
    eval_every: int
    patience: int = 0  # evaluations without improvement before a member stops; 0: never
    checkpoint_every: int = 0  # steps; 0: every ``checkpoint_minutes``
    checkpoint_minutes: float = 5.0
    # A run (one member): a non-finite loss stops it with an error, it keeps its best state in
    # ``checkpoints/best``, and its checkpoints hold its state unstacked. A population freezes a
    # diverged member and goes on, and records its members' best metrics (not their best weights).
    single: bool = True
    rungs: tuple[int, ...] = ()  # successive halving: the worst members stop at these steps
    keep: float = 0.5


@dataclass(frozen=True)
class Events:
    """What the engine tells its caller as it goes (a progress bar): the member-steps of each call
    with the last loss, and each evaluation's metrics."""

    on_progress: Callable[[int, int, float], None] = lambda step, member_steps, loss: None
    on_evaluated: Callable[[int, dict], None] = lambda step, evals: None
    # After each evaluation (and patience): ``{trial: this evaluation's metrics}`` of the live members
    # in, ``{trial: status}`` of the members to stop out (a search's pruner stops members "pruned").
    decide: Callable[[int, dict[int, dict]], dict[int, str]] = lambda step, evals: {}
    # Last at each evaluation, with the engine (its population, slots, live mask, bookkeeping): a search
    # that acts on the population between calls (PBT's exploit and explore) does it here.
    at_evaluation: Callable[[Engine], None] = lambda engine: None
    # What such a search keeps across a resume: saved in every checkpoint's meta under "search".
    search_state: Callable[[], dict] = dict


class Engine:
    """Steps ``pop`` to the end of ``policy``, recording and deciding through ``session``."""

    def __init__(self, pop: Any, session: Session, policy: Policy, select: Selection, events: Events = Events(),
                 refill: Refill | None = None):
        start = session.start
        self.pop, self.session, self.policy, self.select, self.events = pop, session, policy, select, events
        self.refill = refill
        self.slots, self.books = list(start.slots), start.books
        self.objective, self.evals = session.prep.spec.objective, session.prep.evals
        self.metrics, self.checkpointer, self.hooks = session.metrics, session.checkpointer, session.hooks
        self.step, self.saved_step, self.wall0 = start.step, start.step, start.wall_s
        self.live = (np.array([s is not None for s in self.slots]) if start.live is None
                     else np.asarray(start.live, bool))
        self.members = [s for s in self.slots if s is not None] if start.members is None else list(start.members)
        # The global step at which each slot took its member: a member's own step is ``step - offset``.
        self.offsets = np.array(start.offsets if start.offsets is not None else [0] * len(self.slots), np.int64)
        # K per call (``call_length.py``): a run's first call is a short probe, then calls of about 2 s at
        # most, timed from readback to readback; a K the user set is kept as set.
        adaptive = not session.prep.cfg.steps_per_call
        self.length = CallLength(policy.steps_per_call, session.prep.spec.unroll, adaptive,
                                 probe=policy.single and refill is None, speak=distributed.is_primary())
        self.k = self.length.k_at(self.step)  # the K of the call dispatched last
        self.compiled_ks: set[int] = set()  # a dispatch at a new K compiles: the call read back meanwhile is not timed
        self.last_readback: float | None = None
        self.reported_start = False
        self.started = self.last_save = self.last_flush = time.time()
        self.held_best: tuple[int, Any, dict] | None = None  # a run's best state not yet written
        self.agree = distributed.CallAgreement("engine")  # a no-op in one process
        self.hook_failed: HookFailed | None = None  # a hook that raised: the loop stops at the next boundary
        self.search_s = 0.0  # wall time of a search's own work at boundaries (``pipeline.sweep.timing``)
        for t in self.members:
            if self.books[t].status == "pending":
                self.books[t].status = "running"

    def wall(self) -> float:
        return self.wall0 + time.time() - self.started

    # -- the loop ------------------------------------------------------------------------------
    def execute(self, max_calls: int | None = None) -> None:
        """Train to the end; or, with ``max_calls``, make at most that many calls and return at a call
        boundary with every result read back (the sweep's plan probe times calls this way), so a
        later ``execute()`` goes on exactly as if it had not stopped."""
        p = self.policy
        pending, improved, calls = None, [], 0
        self._report_start()
        while self._more():
            if max_calls is not None and calls == max_calls:
                if pending is not None:
                    self._train_metrics(*pending)
                return
            calls += 1
            self.k = k = self.length.k_at(self.step)
            compiles = k not in self.compiled_ks
            self.compiled_ks.add(k)
            if self.session.profiler is not None:
                with self.session.profiler.call(self.step, k):
                    handle = self.pop.step(k)
            else:
                handle = self.pop.step(k)
            self.step += k
            if pending is not None:
                self._train_metrics(*pending, timed=not compiles)  # the previous call's, while this one runs
            pending = (self.step, handle, k, time.perf_counter())
            eval_due = self._eval_due()
            turnover = self.refill is not None and self.step % p.eval_every == 0  # where a free slot is refilled
            # Act on the agreed value only: a signal that lands after the agreement (during this
            # boundary's evaluation or save) stays in the flag for the next boundary's, so every
            # process stops at the same step.
            # A hook that failed stops the loop like a signal: at this boundary, on every process, saved.
            save_due, stop = self.agree(self._latest_due(), self.session.stop["set"] or self.hook_failed is not None)
            if stop and self.hook_failed is None:
                self.session.stop["set"] = True
            if eval_due or save_due or stop or turnover:
                self._train_metrics(*pending)
                pending = None
                improved = self._evaluate() if eval_due else []
                if self.refill is not None:
                    began = time.perf_counter()
                    self._turn_over()
                    self.search_s += time.perf_counter() - began
                if self._ended():
                    break  # the final save follows the loop
                if save_due or stop:
                    self.save(improved)
                elif improved and p.single:
                    self.hold_best()
                if stop:
                    self.checkpointer.wait()
                    self._raise_hook_failure()
                    raise Interrupted(self.session.stopped(self.step))
            elif time.time() - self.last_flush > FLUSH_SECONDS:
                self.metrics.flush()
                self.last_flush = time.time()
        if pending is not None:
            self._train_metrics(*pending)
        for slot in np.flatnonzero(self.live):
            self._finish(self.slots[slot], "done")
        self.live[:] = False  # finished: a later execute() has nothing left to do
        if self.step != self.saved_step:
            self.save(improved)  # the final state: what `latest`, exports and a resume read
        if self.hook_failed is not None:
            self.checkpointer.wait()
            self._raise_hook_failure()

    def _report_start(self) -> None:
        """Once: the steps the live members had already made before this engine (a resume), so that a
        progress count that started from the finished work includes theirs too."""
        if self.reported_start:
            return
        self.reported_start = True
        already = sum(self._own(int(s)) for s in np.flatnonzero(self.live))
        if already:
            self.events.on_progress(self.step, already, math.nan)

    def _more(self) -> bool:
        """Whether to make another call: the run's steps remain (refill: a member is live, or a trial to come)."""
        if self.refill is None:
            return self.step < self.policy.total and bool(self.live.any())
        return bool(self.live.any()) or not self.refill.source.spent()

    def _ended(self) -> bool:
        """At a boundary, after its evaluation: whether the loop ends here."""
        if self.refill is None:
            return self.step >= self.policy.total or not self.live.any()
        # Refill: nothing live, and nothing to refill with (a free slot is refilled at evaluation boundaries).
        return not self.live.any() and (self.refill.source.spent() or self.step % self.policy.eval_every == 0)

    def _own(self, slot: int) -> int:
        """The member's own step count in ``slot``."""
        return self.step - int(self.offsets[slot])

    def _due(self) -> list[int]:
        """The live slots evaluated at this boundary: all of them, or (refill) those whose own step is due."""
        live = [int(s) for s in np.flatnonzero(self.live)]
        if self.refill is None:
            return live
        p = self.policy
        return [s for s in live if self._own(s) % p.eval_every == 0 or self._own(s) >= p.total]

    def _eval_due(self) -> bool:
        if self.refill is None:
            return self.step % self.policy.eval_every == 0 or self.step == self.policy.total
        return bool(self._due())

    def _by_offset(self, slots: Any) -> list[tuple[int, Any]]:
        """``slots`` grouped by their offset, in order: one group (offset 0) without refill."""
        slots = np.asarray(slots, np.int64)
        offsets = self.offsets[slots]
        return [(int(o), slots[offsets == o]) for o in dict.fromkeys(offsets.tolist())]

    def _hook(self, trial: int, event: str, *args: Any) -> None:
        """One member's hooks called for ``event``; a failure is kept for the next call boundary, where
        the loop saves a checkpoint and stops (``_raise_hook_failure``), as a Ctrl-C does."""
        try:
            getattr(self.hooks[trial], event)(*args)
        except HookFailed as exc:
            self.hook_failed = self.hook_failed or exc

    def _raise_hook_failure(self) -> None:
        """The hook's one line, with where the run stopped and how to go on from its checkpoint."""
        if self.hook_failed is not None:
            failed = HookFailed(f"{self.hook_failed}; {self.session.stopped(self.step)}")
            failed.exit_code = self.hook_failed.exit_code
            raise failed from self.hook_failed

    def _latest_due(self) -> bool:
        """The checkpoint policy: every ``checkpoint_every`` steps when set, else every ``checkpoint_minutes``."""
        p = self.policy
        if p.checkpoint_every:
            return self.step % p.checkpoint_every == 0
        return time.time() - self.last_save >= 60.0 * p.checkpoint_minutes

    # -- what the host records between calls ----------------------------------------------------
    def _train_metrics(self, last_step: int, handle: Any, k: int, dispatched: float, timed: bool = True) -> None:
        host = self.pop.fetch(handle)  # {name: (P, K)}
        self._time_call(last_step, k, dispatched, timed)
        if not host:
            return
        steps = np.arange(last_step - k + 1, last_step + 1)
        live = np.flatnonzero(self.live)
        bad_LxK = ~np.isfinite(host["loss"][live])
        ok, diverged = live[~bad_LxK.any(axis=1)], live[bad_LxK.any(axis=1)]
        wall = self.wall()
        # The usual case: every live member's K steps in one block of rows (refill: one per offset).
        for offset, group in self._by_offset(ok):
            self._add([self.slots[s] for s in group], steps - offset, "train", {n: v[group] for n, v in host.items()},
                      wall)
        for slot in ok:
            own = steps - self.offsets[slot]
            self.books[self.slots[slot]].steps = int(own[-1])
            self._hook(self.slots[slot], "after_call", own, {n: v[slot] for n, v in host.items()})
        for slot in diverged:
            trial = self.slots[slot]
            good = int(np.argmax(~np.isfinite(host["loss"][slot])))
            own = steps - self.offsets[slot]
            self._add([trial], own[:good], "train", {n: v[slot:slot + 1, :good] for n, v in host.items()}, wall)
            bad_step = int(own[good])
            if self.policy.single:
                self.metrics.flush()
                raise NonFiniteLoss(f"non-finite training loss at step {bad_step}; the run stopped "
                                    f"(metrics up to step {bad_step - 1} are in {self.metrics.path})")
            # Frozen inside the compiled program at the state before this call.
            self.books[trial].steps = int(own[0]) - 1
            self._stop([int(slot)], "diverged", at=bad_step)
        if len(ok):
            self.events.on_progress(last_step, len(ok) * k, float(np.mean(host["loss"][ok, -1])))

    def _time_call(self, last_step: int, k: int, dispatched: float, timed: bool) -> None:
        """The call ending at ``last_step`` read back: its time into the next calls' K.

        Dispatch is asynchronous, so a call ran from the later of its dispatch (a compile included) and
        the previous call's readback until its own readback. Not timed: a call read back while the next
        call's new K compiled (the readback waited for the compile).
        """
        now = time.perf_counter()
        if timed:
            self.length.observe(k, now - max(dispatched, self.last_readback or dispatched))
        self.last_readback = now
        # One process decides at each readback; several agree on process 0's K at the probe and at evaluations.
        if not self.length.adaptive:
            return
        if distributed.process_count() == 1:
            self.length.set_target(self.length.decide())
        elif not self.length.settled or last_step % self.policy.eval_every == 0:
            self.length.set_target(distributed.share("engine/steps_per_call", self.length.decide()))

    def _add(self, trials: list[int], steps: np.ndarray, split: str, values: dict, wall: float) -> None:
        """Rows of ``trials`` x ``steps``: each value (members, steps). A run's table has no trial column."""
        values = {n: np.asarray(v).reshape(-1) for n, v in values.items()}
        if self.policy.single:
            self.metrics.add(steps, split, values, wall)
            return
        self.metrics.add(np.tile(steps, len(trials)), split, values, wall,
                         trial=np.repeat(np.asarray(trials, np.int32), len(steps)))

    def _add_evaluated(self, split: str, trials: list[int], steps: list[int], values: list[dict], wall: float) -> None:
        """One evaluation's rows of ``split``: each member's values at its own step, in one table (a table a
        member and split made a population's evaluations cost more than their programs)."""
        columns = {n: np.array([v[n] for v in values], np.float64) for n in values[0]}
        members = {} if self.policy.single else {"trial": np.asarray(trials, np.int32)}
        self.metrics.add(np.asarray(steps, np.int64), split, columns, wall, **members)

    def _evaluate(self) -> list[int]:
        """Evaluate every live member; returns the slots whose selection metric improved."""
        sums = self.pop.eval_sums(self.evals)
        sel, wall = self.select, self.wall()
        improved, live = [], self._due()
        rows: dict[str, tuple[list[int], list[int], list[dict]]] = {}  # split -> the members' trials, steps, values
        for slot in live:
            evals = {s: finalize(self.objective, {n: v[slot] for n, v in per.items()}) for s, per in sums.items()}
            if sel.metric not in evals[sel.split or "test"]:  # split "": no validation, nothing selected
                raise ConfigError(f"objective '{self.objective.name}' returned no '{sel.metric}' metric "
                                    f"(it returned {', '.join(evals[sel.split or 'test'])})")
            trial, own = self.slots[slot], self._own(slot)
            if self.books[trial].observe(own, evals, sel.split, sel.metric, sel.higher):
                improved.append(int(slot))
            for s, values in evals.items():
                trials, owns, split_values = rows.setdefault(s, ([], [], []))
                trials.append(trial)
                owns.append(own)
                split_values.append(values)
            self._hook(trial, "on_eval", own, evals)
        for s, (trials, owns, values) in rows.items():
            self._add_evaluated(s, trials, owns, values, wall)
        improved = self._agree_on_evaluation(improved)
        if len(live):
            self.events.on_evaluated(self._own(live[0]), self.books[self.slots[live[0]]].last_eval)
        if self.policy.patience:
            self._stop([int(s) for s in live if self.books[self.slots[s]].evals_since_best >= self.policy.patience],
                       "early_stopped")
        live = [s for s in live if self.live[s]]
        began = time.perf_counter()
        # A search's verdicts, asked once per own step of the members evaluated (once, without refill).
        for offset, group in self._by_offset(live) or [(0, np.array([], np.int64))]:
            group = [int(s) for s in group]
            verdicts = self.events.decide(self.step - offset,
                                          {self.slots[s]: self.books[self.slots[s]].last_eval for s in group})
            for status in sorted(set(verdicts.values())):
                self._stop([s for s in group if verdicts.get(self.slots[s]) == status], status)
        if self.refill is not None:
            self._asha([s for s in live if self.live[s]])
        elif self.step in self.policy.rungs and self.step < self.policy.total:
            self._halve()
        self.events.at_evaluation(self)
        self.search_s += time.perf_counter() - began
        return improved

    def _agree_on_evaluation(self, improved: list[int]) -> list[int]:
        """Process 0's view of this evaluation (which members improved, every member's bookkeeping)
        on every process; in one process, ``improved`` as it is."""
        if distributed.process_count() == 1:
            return improved
        books = {t: self.books[t].to_json() for t in self.members}
        improved, books = distributed.share("evaluation", (improved, books))
        for t, record in books.items():  # in place: the caller holds these objects
            vars(self.books[t]).update(vars(Bookkeeping.from_json(record)))
        return improved

    def _stop(self, slots: list[int], status: str, at: int | None = None) -> None:
        if not slots:
            return
        for slot in slots:
            self._finish(self.slots[slot], status, self._own(slot) if at is None else at)
        self.live[slots] = False
        self.pop.stop(slots)

    def _finish(self, trial: int, status: str, at: int | None = None) -> None:
        """How a member ended, and its wall time then (members of one population share the clock)."""
        self.books[trial].finish(status, at)
        self.books[trial].wall_s = self.wall()
        if self.refill is not None:
            self.refill.source.tell(trial, self.books[trial])

    def _badness(self, slot: int) -> float:
        """The member's last selection metric, lower better: what halving ranks by (NaN is worst)."""
        value = self.books[self.slots[slot]].last_eval[self.select.split][self.select.metric]
        return math.inf if math.isnan(value) else (-1.0 if self.select.higher else 1.0) * value

    def _halve(self) -> None:
        """Successive halving: the worst live members stop here; their records stay."""
        live = [int(s) for s in np.flatnonzero(self.live)]
        ranked = sorted(live, key=lambda slot: (self._badness(slot), self.slots[slot]))
        survivors = max(1, math.ceil(len(ranked) * self.policy.keep))
        self._stop(ranked[survivors:], "stopped")
        kept = [int(s) for s in np.flatnonzero(self.live)]
        if len(kept) <= len(self.slots) // 2:  # repack: stopped members stop costing compute
            self.pop.keep_only(kept)
            self.slots = [self.slots[s] for s in kept]
            self.live = self.live[kept]

    # -- refill (``slots.py``) ---------------------------------------------------------------------
    def _asha(self, slots: list[int]) -> None:
        """Asynchronous successive halving: each of ``slots`` at a rung of its own step is recorded there,
        then stopped unless it ranks in the top ``keep`` of the rung's record (``RungRecord``)."""
        p, rungs = self.policy, self.refill.rungs
        at_rung = [s for s in slots if self._own(s) in p.rungs and self._own(s) < p.total]
        for s in at_rung:
            rungs.record(self._own(s), self.slots[s], self._badness(s))
        self._stop([s for s in at_rung if not rungs.kept(self._own(s), self.slots[s], p.keep)], "stopped")

    def _turn_over(self) -> None:
        """Members at their own last step end "done"; at an evaluation boundary each free slot takes the
        source's next trial (fresh state, its data order from its step 0)."""
        ended = [int(s) for s in np.flatnonzero(self.live) if self._own(int(s)) >= self.policy.total]
        for slot in ended:
            self._finish(self.slots[slot], "done")
        if ended:
            self.live[ended] = False
            self.pop.stop(ended)
        if self.step % self.policy.eval_every:
            return
        for slot in [int(s) for s in np.flatnonzero(~self.live)]:
            trial = self.refill.source.next_trial()
            if trial is None:
                return
            self._enter(slot, trial)

    def _enter(self, slot: int, trial: int) -> None:
        state, seed = self.refill.fresh(trial)
        self.pop.put(slot, state)
        self.pop.feed.enter(slot, seed, self.step)
        self.slots[slot], self.offsets[slot], self.live[slot] = trial, self.step, True
        self.refill.entered[trial] = self.step
        if trial not in self.members:
            self.members.append(trial)
        self.books[trial] = Bookkeeping(status="running")
        self.hooks[trial] = self.refill.hooks(trial)

    # -- checkpoints ---------------------------------------------------------------------------
    def meta(self) -> dict:
        wall = self.wall()
        for t in self.members:
            if self.books[t].status == "running":
                self.books[t].wall_s = wall
        meta = checkpoint_meta(self.step, wall, self.members, self.slots, self.live, self.books,
                               **self.session.position(self.step))
        if self.refill is not None:
            meta = {**meta, "offsets": [int(o) for o in self.offsets], "refill": self.refill.to_json()}
        search = self.events.search_state()
        return {**meta, "search": search} if search else meta

    def state(self) -> Any:
        """What a checkpoint holds: a run's one state, or the population's states stacked."""
        return self.pop.members[0] if self.policy.single else self.pop.states()

    def hold_best(self) -> None:
        """A run's new best between latest checkpoints: kept on the host, written with the next latest
        one, before it, so the best checkpoint on disk always agrees with the bookkeeping a resume
        starts from."""
        self.held_best = (self.step, keep_copy(self.state()), self.meta())

    def save(self, improved: list[int]) -> None:
        self.metrics.flush()
        self.last_flush = time.time()
        best = bool(improved) and self.policy.single
        if self.held_best is not None and not best:
            self.checkpointer.save_best(*self.held_best)
        self.held_best = None
        self.checkpointer.save(self.step, self.state(), self.meta(), best=best)
        self.saved_step, self.last_save = self.step, time.time()
        for t in self.members:
            self._hook(t, "on_checkpoint", self.step, best)

