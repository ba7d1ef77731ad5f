"""Slot refill: a stopped member's slot takes the next trial, and rungs decided asynchronously (ASHA).

A refill population keeps its size and every input shape: when a member stops (at a rung, by
patience, by a pruner, by divergence, or at its last step), the engine puts the next trial's
fresh state into its slot at the next evaluation boundary (a global step that is a multiple of
``eval_every``), and the slot's data order restarts at that trial's step 0. Each member counts
its own steps (the global step minus the step its slot took it, its *offset*); offsets are
multiples of ``eval_every``, so the live members' evaluations still fall on the same calls.

Where the next trial comes from is a ``TrialSource``: a list drawn up front (``--strategy
random``), or a search asked one trial at a time. Its position is saved in every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.hooks import Hook
from pipeline.train.evaluation import Bookkeeping


class TrialSource(Protocol):
    """Where a freed slot's next trial comes from (the ids index the sweep's trials)."""

    def next_trial(self) -> int | None:
        """The next trial, or None when none is to be had now (the budget spent, or a search waiting)."""

    def spent(self) -> bool:
        """Whether the budget is spent: no trial will ever come again."""

    def tell(self, trial: int, book: Bookkeeping) -> None:
        """A trial ended (its status, last and best evaluations are in ``book``)."""

    def position(self) -> dict:
        """How far the source has got: saved in every checkpoint's meta."""

    def restore(self, position: dict) -> None:
        """Back to a saved ``position`` (a resume)."""


@dataclass
class RungRecord:
    """ASHA's memory: every value recorded at each rung so far, as a badness (lower is better, NaN worst).

    The rule (asynchronous successive halving, Li et al. 2018, in its stopping form): a member that
    reaches a rung of its own step count is recorded there, then kept when it ranks in the top
    ``ceil(n x keep)`` (at least 1) of the ``n`` members recorded at that rung so far, itself and every
    member reaching the rung at the same call included; else it stops. Ties go to the lower trial id.
    A member once kept is never stopped by later arrivals. Members that reach a rung together are
    ranked together, so a first cohort that reaches it at once is halved exactly as synchronous
    successive halving halves it.
    """

    seen: dict[int, dict[int, float]] = field(default_factory=dict)  # rung -> {trial: badness}

    def record(self, rung: int, trial: int, badness: float) -> None:
        self.seen.setdefault(rung, {})[trial] = badness

    def kept(self, rung: int, trial: int, keep: float) -> bool:
        ranked = sorted(self.seen[rung].items(), key=lambda item: (item[1], item[0]))
        top = max(1, math.ceil(len(ranked) * keep))
        return trial in {t for t, _ in ranked[:top]}

    def to_json(self) -> dict:
        return {str(r): {str(t): (None if math.isinf(v) else v) for t, v in values.items()}
                for r, values in self.seen.items()}

    @classmethod
    def from_json(cls, data: dict) -> RungRecord:
        return cls({int(r): {int(t): (math.inf if v is None else float(v)) for t, v in values.items()}
                    for r, values in data.items()})


@dataclass
class Refill:
    """What the engine needs to refill slots: the source, each trial's fresh state, its hooks, the rungs."""

    source: TrialSource
    fresh: Callable[[int], tuple[Any, int]]  # trial -> (its initial train state, its data seed)
    hooks: Callable[[int], Hook]  # trial -> its hooks (trackers), made as it takes a slot
    rungs: RungRecord = field(default_factory=RungRecord)
    entered: dict[int, int] = field(default_factory=dict)  # trial -> the global step its slot took it

    def to_json(self) -> dict:
        return {"source": self.source.position(), "rungs": self.rungs.to_json(),
                "entered": {str(t): int(s) for t, s in self.entered.items()}}

    def restore(self, data: dict) -> None:
        self.source.restore(data["source"])
        self.rungs = RungRecord.from_json(data["rungs"])
        self.entered = {int(t): int(s) for t, s in data["entered"].items()}
