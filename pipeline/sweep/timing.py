"""What a sweep spends outside its training programs: its bookkeeping, as a share of its wall time.

Two parts, both wall time in the sweep's process:
- between populations: from the end of one population (its final checkpoint written) to the start
  of the next (telling the search, asking the next round, fresh states, the checkpoint folder, the
  curves and the trials table);
- inside a population, at its evaluation boundaries: what the search does there (a pruner's
  verdicts, PBT's exploit and explore, a freed slot refilled), counted by the engine
  (``Engine.search_s``).

Start-up (imports, the dataset, the compiles) and the training calls themselves are not
bookkeeping; the small programs a search runs at boundaries are compiled beside the first calls
(``pipeline.train.compile_ahead``), not at a boundary. ``summary.json`` keeps the figures under ``timing``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.train.engine import Engine


@dataclass
class SweepClock:
    between_populations_s: float = 0.0
    at_boundaries_s: float = 0.0
    _ended: float | None = None

    def population_starts(self) -> None:
        if self._ended is not None:
            self.between_populations_s += time.perf_counter() - self._ended
            self._ended = None

    def population_ended(self, engine: Engine) -> None:
        self._ended = time.perf_counter()
        self.at_boundaries_s += engine.search_s

    def record(self, wall_s: float) -> dict[str, float]:
        spent = self.between_populations_s + self.at_boundaries_s
        return {"between_populations_s": round(self.between_populations_s, 3),
                "at_boundaries_s": round(self.at_boundaries_s, 3), "bookkeeping_s": round(spent, 3),
                "bookkeeping_share": round(spent / wall_s, 4) if wall_s > 0 else 0.0}
