"""One population from first step to last: K steps a call, evaluations, halving, checkpoints.

The host reads back the metrics of call N while call N+1 runs. At evaluations it catches
up, records every live member, stops diverged, early-stopped and (at rungs) the worst
members, and checkpoints the population so an interrupted sweep continues from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.objectives import best_metric
from pipeline.sweep import checkpoint
from pipeline.sweep.plan import Group, Trial
from pipeline.sweep.population import MemberOrders, SoloPopulation, VmapPopulation, stack, unstack
from pipeline.sweep.records import Curves, TrialRecord
from pipeline.train.evaluation import finalize
from pipeline.train.loop import Interrupted, Prepared
from pipeline.train.state import create_state, same_program


@dataclass
class Halving:
    rungs: tuple[int, ...] = ()
    keep: float = 0.5  # the fraction of live members that continue at each rung


@dataclass
class GroupRun:
    """What every population of one group shares: data, compiled programs, where to record."""

    group: Group
    prep: Prepared
    programs: Any
    vmap: bool
    trials: list[Trial]
    records: dict[int, TrialRecord]
    checkpoints: Path
    halving: Halving
    interrupted: dict
    on_checkpoint: Callable[[], None]  # rewrites trials.parquet
    on_progress: Callable[[int, float], None] = lambda steps, loss: None
    seed_slots: int = 1  # distinct data seeds a population of this group holds, at most
    select: tuple[str, str] = field(init=False)
    higher: bool = field(init=False)  # whether the selection metric is better higher

    def __post_init__(self) -> None:
        metric = best_metric(self.prep.cfg, self.prep.spec.objective)
        self.select = (self.prep.select_split, metric)
        self.higher = self.prep.spec.objective.higher_is_better[metric]


class PopulationRun:
    def __init__(self, run: GroupRun, index: int, members: list[int], size: int):
        self.run, self.members = run, members
        self.folder = run.checkpoints / f"g{run.group.id}-c{index}"
        self.cfg = run.prep.cfg
        self.k, self.total = run.group.steps_per_call, run.group.total_steps
        self.slots: list[int | None] = members + [None] * (size - len(members))
        self.step, self.wall0 = 0, 0.0
        self.curves = Curves()
        self.saved_rows = 0  # curve rows already in the checkpoint's parts
        self.live = np.array([s is not None for s in self.slots])
        restored = self._restore()
        states = restored if restored is not None else self._fresh_states()
        if run.vmap and isinstance(states, list):
            states = stack(states)
        for t in members:
            if run.records[t].status == "pending":
                run.records[t].status = "running"
        seeds = [self._slot_cfg(slot).resolved_data_seed for slot in self.slots]
        orders = MemberOrders(seeds, run.prep.train, self.cfg.batch_size, run.seed_slots)
        if run.vmap:
            self.pop = VmapPopulation(run.programs, states, self.live, orders, self.step)
        else:
            states = states if isinstance(states, list) else unstack(states, len(self.slots))
            self.pop = SoloPopulation(run.programs, states, self.live, orders, self.step)
        self.started = time.time()

    def _restore(self) -> Any:
        """The checkpointed stacked state (and records, curves, position), or None to start afresh."""
        meta = checkpoint.read_meta(self.folder)
        if meta is None or meta["members"] != self.members:
            return None
        padded = self.slots
        self.slots = meta["slots"]  # after a repack, fewer slots than members
        restored = checkpoint.load(self.folder, stack(self._fresh_states()))
        if restored is None:  # made by another program: start over
            self.slots = padded
            return None
        host_state, meta, table = restored
        self.step, self.wall0 = meta["step"], meta["wall_s"]
        self.live = np.array(meta["live"], bool)
        for tid, rec in meta["records"].items():
            self.run.records[int(tid)] = TrialRecord.from_json(rec)
        if table is not None:
            self.curves.extend(table)
            self.saved_rows = table.num_rows
        return host_state

    def _fresh_states(self) -> list[Any]:
        states = []
        for slot in self.slots:
            spec, state = create_state(self._slot_cfg(slot), self.run.prep.info, self.total)
            # plan.check_programs refused this before the sweep began; a member must never run another program.
            assert same_program(spec, self.run.prep.spec), f"trial {slot} does not fit its population's program"
            states.append(state)
        return states

    def _slot_cfg(self, slot: int | None):
        """A slot's trial config; padding slots (None) repeat the first member."""
        return self.run.trials[self.members[0] if slot is None else slot].cfg

    def wall(self) -> float:
        return self.wall0 + time.time() - self.started

    # -- the loop ------------------------------------------------------------------------
    def execute(self) -> None:
        pending = None
        every_save = self.cfg.checkpoint_every or self.cfg.eval_every  # populations save at evaluations
        while self.step < self.total and self.live.any():
            handle = self.pop.step()
            self.step += self.k
            if pending is not None:
                self._train_metrics(*pending)  # the previous call's, while this one runs
            pending = (self.step, handle)
            eval_due = self.step % self.cfg.eval_every == 0 or self.step == self.total
            save_due = self.step % every_save == 0
            if eval_due or save_due or self.run.interrupted["set"]:
                self._train_metrics(*pending)
                pending = None
                if eval_due:
                    self._evaluate()
                if self.step < self.total and self.live.any():
                    self.save()
                if self.run.interrupted["set"]:
                    raise Interrupted(f"interrupted at step {self.step} of group {self.run.group.id}; the sweep "
                                      f"is checkpointed: continue it with the same command and --sweep-dir "
                                      f"{self.run.checkpoints.parent}")
        if pending is not None:
            self._train_metrics(*pending)
        for slot in np.flatnonzero(self.live):
            self._finish(self.slots[slot], "done", None)

    def _finish(self, trial: int, status: str, at: int | None, steps: int | None = None) -> None:
        rec = self.run.records[trial]
        rec.status, rec.stopped_at = status, at
        rec.steps = self.step if steps is None else steps
        rec.wall_s = self.wall()

    def _train_metrics(self, last_step: int, handle: Any) -> None:
        host = self.pop.fetch(handle)
        if not host:
            return
        steps = np.arange(last_step - self.k + 1, last_step + 1)
        live = np.flatnonzero(self.live)
        bad_LxK = ~np.isfinite(host["loss"][live])
        ok = live[~bad_LxK.any(axis=1)]
        ids = np.array([self.slots[s] for s in ok], np.int64)
        self.curves.add(np.repeat(ids, self.k), np.tile(steps, len(ok)), "train",
                        {n: v[ok].reshape(-1) for n, v in host.items()})
        diverged = []
        for row, slot in enumerate(live):
            if not bad_LxK[row].any():
                continue
            first = int(np.argmax(bad_LxK[row]))
            trial = self.slots[slot]
            self.curves.add(np.full(first, trial), steps[:first], "train",
                            {n: v[slot, :first] for n, v in host.items()})
            # Frozen inside the compiled program at the state before this call.
            self._finish(trial, "diverged", int(steps[first]), steps=last_step - self.k)
            diverged.append(int(slot))
        if diverged:
            self.live[diverged] = False
            self.pop.stop(diverged)
        for slot in ok:
            self.run.records[self.slots[slot]].steps = last_step
        if len(ok):
            self.run.on_progress(len(ok) * self.k, float(np.mean(host["loss"][ok, -1])))

    def _evaluate(self) -> None:
        sums = self.pop.eval_sums(self.run.prep.evals)
        split, metric = self.run.select
        objective = self.run.prep.spec.objective
        live = np.flatnonzero(self.live)
        for slot in live:
            evals = {s: finalize(objective, {n: v[slot] for n, v in per.items()}) for s, per in sums.items()}
            trial = self.slots[slot]
            self.run.records[trial].observe(self.step, evals, split, metric, self.run.higher)
            for s, values in evals.items():
                self.curves.add(np.array([trial]), np.array([self.step]), s, values)
        patience = self.cfg.patience
        if patience:
            done = [int(s) for s in live if self.run.records[self.slots[s]].evals_since_best >= patience]
            self._stop(done, "early_stopped")
        if self.step in self.run.halving.rungs and self.step < self.total:
            self._halve(split, metric)

    def _stop(self, slots: list[int], status: str) -> None:
        if not slots:
            return
        for slot in slots:
            self._finish(self.slots[slot], status, self.step)
        self.live[slots] = False
        self.pop.stop(slots)

    def _halve(self, split: str, metric: str) -> None:
        """Successive halving: the worst members of this population stop here; their records stay."""
        live = [int(s) for s in np.flatnonzero(self.live)]
        sign = -1.0 if self.run.higher else 1.0

        def badness(slot: int) -> tuple[float, int]:
            value = self.run.records[self.slots[slot]].last_eval[split][metric]
            return (math.inf if math.isnan(value) else sign * value, self.slots[slot])

        ranked = sorted(live, key=badness)
        survivors = max(1, math.ceil(len(ranked) * self.run.halving.keep))
        self._stop(ranked[survivors:], "stopped")
        kept = [int(s) for s in np.flatnonzero(self.live)]
        if len(kept) <= len(self.slots) // 2:  # repack: stopped members stop costing compute
            self.pop.keep_only(kept)
            self.slots = [self.slots[s] for s in kept]
            self.live = self.live[kept]

    def save(self) -> None:
        meta = {
            "members": self.members, "slots": self.slots, "live": self.live.tolist(), "step": self.step,
            "wall_s": self.wall(),
            "records": {str(t): self.run.records[t].to_json() for t in self.members},
        }
        table = self.curves.table()
        checkpoint.save(self.folder, self.pop.host_state(), meta, table.slice(self.saved_rows))
        self.saved_rows = table.num_rows
        self.run.on_checkpoint()
