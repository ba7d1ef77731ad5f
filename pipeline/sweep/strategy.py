"""Strategies turn a space into trials: ``grid`` (the cross product) and ``random`` (seeded), made up
front; the searches (``SEARCHES``, Optuna's samplers) ask for them round by round (``rounds.py``)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from pipeline.sweep.space import Space, SpaceError

STRATEGIES = ("grid", "random")
SEARCHES = ("tpe", "gp", "cmaes", "qmc")  # Optuna's samplers, asked a population at a time (optuna_search.py)
PBT = "pbt"  # population-based training (pbt.py, pbt_run.py)
CHOICES = STRATEGIES + SEARCHES + (PBT,)
DEFAULT_RANDOM_TRIALS = 16
MAX_TRIALS = 100_000  # a sweep larger than this is refused before any trial is built


def trials(space: Space, strategy: str, count: int | None, seed: int) -> list[dict[str, Any]]:
    """One ``{key: value}`` per trial, in a fixed order (trial ids are positions in this list)."""
    if strategy not in STRATEGIES:
        raise SpaceError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES + SEARCHES)}")
    check_space(space, count)
    if strategy == "grid":
        return _grid(space, count)
    rng = np.random.default_rng(seed)
    n = DEFAULT_RANDOM_TRIALS if count is None else count
    return [{d.key: d.sample(rng) for d in space.dimensions} for _ in range(n)]


def check_space(space: Space, count: int | None) -> None:
    """What every strategy needs: something swept, and a trial count in range."""
    if not space.dimensions:
        raise SpaceError("the search space is empty: give KEY=SPACE arguments such as "
                         "optimizer.learning_rate='loguniform(1e-4,1e-1)', or add sweep() to the experiment")
    if count is not None and count < 1:
        raise SpaceError(f"bad value for '--trials': {count} must be at least 1")
    if count is not None and count > MAX_TRIALS:
        raise SpaceError(f"bad value for '--trials': {count} is more than the {MAX_TRIALS} trials a sweep may have")


def _grid(space: Space, count: int | None) -> list[dict[str, Any]]:
    for d in space.dimensions:
        if not d.finite:
            raise SpaceError(f"grid search cannot enumerate '{d.key}': {d.text} is a continuous interval; "
                             "use choice(...), range(...) or logspace(...), or --strategy random")
    size = math.prod(len(d.values) for d in space.dimensions)
    if size > MAX_TRIALS:
        raise SpaceError(f"the grid has {size} cells, more than the {MAX_TRIALS} trials a sweep may have; "
                         "narrow the space or use --strategy random --trials N")
    keys = [d.key for d in space.dimensions]
    cells = [dict(zip(keys, values)) for values in itertools.product(*(d.values for d in space.dimensions))]
    if count is not None and count != len(cells):
        raise SpaceError(f"bad value for '--trials': the grid has {len(cells)} cells and runs them all; "
                         "--trials applies to --strategy random")
    return cells
