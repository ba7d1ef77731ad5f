"""From trials to groups and populations: what runs together in one compiled program.

Trials whose configs differ only in traced hyperparameters share a group: their train
states have the same structure and shapes, so they stack into one vmapped population.
Everything else (model structure, batch size, steps, precision, optimizer name,
schedule, ...) is part of the compiled program and splits trials into groups.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jax

from pipeline.config import Config, ConfigError, apply_overrides, flat_keys, is_switch, traced_fields
from pipeline.data import DatasetInfo
from pipeline.sweep.space import Space, format_value
from pipeline.train.prepare import total_steps, train_rows
from pipeline.train.selection import check_ranking
from pipeline.train.steps_per_call import choose_steps_per_call

DEFAULT_POPULATION_BYTES = 2 * 1024**3


@dataclass
class Trial:
    id: int
    values: dict[str, Any]  # the swept keys' values
    overrides: list[str]  # fixed then swept: `pipeline train EXPERIMENT *overrides` re-runs this trial
    cfg: Config
    group: int = -1

    @cached_property
    def program_key(self) -> str:
        """``group_key`` of its config: made once (a search regroups every trial each round)."""
        return group_key(self.cfg)


@dataclass
class Group:
    id: int
    key: str  # the config with traced keys blanked: equal keys, equal compiled programs
    trials: list[int] = field(default_factory=list)
    chunks: list[list[int]] = field(default_factory=list)  # populations, run one after another
    total_steps: int = 0
    steps_per_call: int = 0


def make_trials(base: Config, space: Space, points: list[dict[str, Any]]) -> list[Trial]:
    """Apply each point's overrides to ``base``; an invalid combination fails before anything runs."""
    out = []
    for i, point in enumerate(points):
        overrides = list(space.fixed) + [f"{k}={format_value(v)}" for k, v in point.items()]
        try:
            cfg = apply_overrides(base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"trial {i} ({' '.join(overrides[len(space.fixed):])}): {exc}") from None
        out.append(Trial(i, dict(point), overrides, cfg))
    return out


def asked_trial(base: Config, space: Space, trial_id: int, values: dict[str, Any], next_id: int) -> Trial:
    """The trial a search asked for (its id is the study's trial number, the next in order)."""
    try:
        t = make_trials(base, space, [values])[0]
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("trial 0 ", f"trial {trial_id} ", 1)) from None
    t.id = trial_id
    assert t.id == next_id, f"trial {t.id} asked out of order"
    return t


def group_key(cfg: Config) -> str:
    """The config with its traced fields (marked on the config classes) blanked, switches kept as on/off.

    The seeds are traced: a carved validation split is drawn by ``data.validation_seed`` (part of
    the key), not by the trial's seed, so trials differing only in seeds share data and a program.
    """
    flat = flat_keys(cfg)
    for key, f in traced_fields(cfg).items():
        value = flat.pop(key)
        if is_switch(f):
            flat[key + ">0"] = bool(value > 0)
    return json.dumps(flat, sort_keys=True, default=str)


def make_groups(trials: list[Trial], infos: dict[str, DatasetInfo]) -> list[Group]:
    """Group trials by their compiled program, in order of first appearance; fix each group's steps.

    A group's trials share their data config and ``selection.split``: a group without a validation
    split to rank on is refused here, before anything runs (``check_ranking``)."""
    groups: dict[str, Group] = {}
    for t in trials:
        key = t.program_key
        g = groups.setdefault(key, Group(len(groups), key))
        g.trials.append(t.id)
        t.group = g.id
    for g in groups.values():
        cfg = trials[g.trials[0]].cfg
        info = infos[cfg.data.name]
        check_ranking(cfg, info)
        g.total_steps = total_steps(cfg, train_rows(cfg, info))
        g.steps_per_call = choose_steps_per_call(cfg, g.total_steps)
    return list(groups.values())


def check_programs(groups: list[Group], trials: list[Trial], infos: dict[str, DatasetInfo],
                   seen: dict[str, dict[tuple, Any]] | None = None) -> None:
    """Refuse, before anything runs, a traced model field whose values change the model's structure.

    ``traced()`` promises that a field's value lives in the state, so trials differing in it
    share one program; a model that keeps it as a static attribute (``nnx.Dropout``'s rate)
    breaks that promise. One abstract build per distinct set of the model's traced values
    (``seen``: the builds of earlier calls, by group and values, so a search's rounds build each once).
    """
    from pipeline.train.state import model_graph

    for g in groups:
        first = trials[g.trials[0]].cfg
        model_keys = [k for k in traced_fields(first) if k.startswith("model.")]
        if not model_keys:
            continue
        graphs = seen.setdefault(g.key, {}) if seen is not None else {}
        for t in (trials[i] for i in g.trials):
            values = tuple(flat_keys(t.cfg)[k] for k in model_keys)
            if values not in graphs:
                graphs[values] = model_graph(t.cfg, infos[t.cfg.data.name])
            if graphs[values] != next(iter(graphs.values())):
                raise ConfigError(f"trial {t.id} ({' '.join(t.overrides[-len(t.values):])}): a field marked traced "
                                  "changes the model's structure (a static attribute such as nnx.Dropout's rate); "
                                  "declare it without traced(), or keep the value in a pipeline.models."
                                  "Hyperparameter (as pipeline.models.Dropout does)")


def member_bytes(state: Any, cfg: Config, info: DatasetInfo) -> int:
    """A rough device footprint of one member: state, gradients and update temporaries, activations."""
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    batch_bytes = cfg.batch_size * math.prod(info.feature_shape) * 4
    return 4 * state_bytes + 8 * batch_bytes


def chunk(trial_ids: list[int], capacity: int) -> list[list[int]]:
    """Split into the fewest populations of at most ``capacity``, as even as possible."""
    n = -(-len(trial_ids) // max(capacity, 1))
    size = -(-len(trial_ids) // n)
    return [trial_ids[i:i + size] for i in range(0, len(trial_ids), size)]


def population_size(per_member: int, max_population: int | None, budget_bytes: int) -> int:
    by_memory = max(1, budget_bytes // max(per_member, 1))
    return min(by_memory, max_population) if max_population else by_memory


def parse_bytes(text: str) -> int:
    """``512M``, ``2G``, ``1.5GiB`` or a plain number of bytes."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(unit)]) * units[unit]
    except ValueError:
        raise ConfigError(f"bad value for '--population-memory': {text!r} is not a size like 512M or 2G") from None
    if value < 1:
        raise ConfigError(f"bad value for '--population-memory': {text!r} must be positive")
    return int(value)
