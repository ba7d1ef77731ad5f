"""Population-based training: rank, exploit and explore one population between its compiled calls.

At every ``pbt.interval`` steps (an evaluation step) the live members are ranked on the
selection metric. Each member of the bottom ``pbt.quantile`` takes the whole state of a member
drawn from the top quantile (``VmapPopulation.exploit``: one gather on the device), and its
hyperparameters become its parent's, each then perturbed (multiplied by a factor drawn from
``pbt.perturb``; a key with a finite list of values steps to the neighbouring value in that
direction) or, with probability ``pbt.resample``, drawn again from the space. Explore stays
inside the space. ``seed`` and ``data_seed`` are never explored: they are what the copied state
and data order were made with, so the child takes its parent's.

The controller's numpy RNG and every member's hyperparameters travel in each checkpoint's meta
(``search_state``), so a resumed sweep takes the same decisions; ``SWEEP_DIR/pbt.parquet`` is
the lineage: at step 0 and at every interval, each member's trial, parent and hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.config import Config, ConfigError, apply_overrides, is_switch, traced_fields
from pipeline.durable.files import write_parquet
from pipeline.durable.records import read_parquet
from pipeline.sweep.grouping import Trial
from pipeline.sweep.space import Dimension, Space, format_value
from pipeline.train.engine import Engine
from pipeline.train.exploit import INHERITED
from pipeline.train.selection import Selection

LINEAGE_FILE = "pbt.parquet"
PREFIX = "pbt."


@dataclass(frozen=True)
class PBTOptions:
    interval: int | None = None  # steps between exploit steps; None: every evaluation (eval_every)
    quantile: float = 0.25  # the bottom fraction copies the top fraction
    perturb: tuple[float, ...] = (0.8, 1.25)  # factors an explored value is multiplied by
    resample: float = 0.25  # probability an explored key is drawn from the space instead

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "perturb": list(self.perturb)}


def _number(key: str, text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"bad value for '{key}': {text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"bad value for '{key}': {text!r} is not {what}")
    return value


def split_pbt_args(args: list[str]) -> tuple[PBTOptions, list[str]]:
    """The ``pbt.KEY=VALUE`` arguments parsed into options, and the other arguments (the space)."""
    found: dict[str, str] = {}
    rest = []
    for arg in args:
        key, sep, text = arg.partition("=")
        if not key.strip().startswith(PREFIX):
            rest.append(arg)
            continue
        key = key.strip()
        if not sep:
            raise ConfigError(f"bad value for '{key}': give it as {key}=VALUE")
        if key.removeprefix(PREFIX) not in PBTOptions.__dataclass_fields__:
            raise ConfigError(f"unknown PBT setting '{key}'; use pbt.interval, pbt.quantile, pbt.perturb or "
                              "pbt.resample")
        found[key] = text.strip()
    opts = PBTOptions()
    if "pbt.interval" in found:
        interval = _number("pbt.interval", found["pbt.interval"], int, "a whole number of steps")
        if interval < 1:
            raise ConfigError(f"bad value for 'pbt.interval': {interval} must be at least 1 step")
        opts = PBTOptions(interval, opts.quantile, opts.perturb, opts.resample)
    if "pbt.quantile" in found:
        quantile = _number("pbt.quantile", found["pbt.quantile"], float, "a number")
        if not 0.0 < quantile <= 0.5:
            raise ConfigError(f"bad value for 'pbt.quantile': {quantile} must be above 0 and at most 0.5")
        opts = PBTOptions(opts.interval, quantile, opts.perturb, opts.resample)
    if "pbt.perturb" in found:
        parts = [p for p in found["pbt.perturb"].split(",") if p.strip()]
        factors = tuple(_number("pbt.perturb", p.strip(), float, "a comma list of factors like 0.8,1.25")
                        for p in parts)
        if not factors or any(f <= 0 for f in factors):
            raise ConfigError(f"bad value for 'pbt.perturb': {found['pbt.perturb']!r} must be a comma list of "
                              "positive factors like 0.8,1.25")
        opts = PBTOptions(opts.interval, opts.quantile, factors, opts.resample)
    if "pbt.resample" in found:
        resample = _number("pbt.resample", found["pbt.resample"], float, "a probability")
        if not 0.0 <= resample <= 1.0:
            raise ConfigError(f"bad value for 'pbt.resample': {resample} must be a probability in [0, 1]")
        opts = PBTOptions(opts.interval, opts.quantile, opts.perturb, resample)
    return opts, rest


# -- explore --------------------------------------------------------------------------------------
def allowed(dim: Dimension, on: bool | None) -> list[Any]:
    """A finite dimension's values in order (numbers ascending); for a switch, those on its side of 0."""
    values = list(dict.fromkeys(dim.values))
    if on is not None:
        values = [v for v in values if (v > 0) == on] or values
    try:
        return sorted(values)
    except TypeError:
        return values


def explore(value: Any, dim: Dimension, on: bool | None, opts: PBTOptions, rng: np.random.Generator) -> Any:
    """``value`` perturbed, or resampled with probability ``opts.resample``; always inside ``dim``
    (and, for a switch that is on, above 0: the program has that piece)."""
    resample = rng.random() < opts.resample
    factor = float(opts.perturb[int(rng.integers(len(opts.perturb)))])
    if dim.finite:
        values = allowed(dim, on)
        if resample:
            return values[int(rng.integers(len(values)))]
        at = values.index(value) if value in values else 0
        step = 1 if factor > 1 else -1 if factor < 1 else 0
        return values[min(max(at + step, 0), len(values) - 1)]
    if resample:
        drawn = dim.sample(rng)
        return drawn if on is None or (drawn > 0) == on else value
    return float(min(max(value * factor, dim.low), dim.high))


# -- the controller -------------------------------------------------------------------------------
def _rng_json(rng: np.random.Generator) -> dict:
    """The generator's state with its 128-bit integers as text (JSON readers differ on big numbers)."""
    state = rng.bit_generator.state
    return {**state, "state": {k: str(v) for k, v in state["state"].items()}}


def _rng_from_json(saved: dict) -> np.random.Generator:
    rng = np.random.default_rng(0)
    rng.bit_generator.state = {**saved, "state": {k: int(v) for k, v in saved["state"].items()}}
    return rng


class PBT:
    """Exploit and explore for one population (``Events.at_evaluation``), and what a resume needs."""

    def __init__(self, opts: PBTOptions, space: Space, base: Config, trials: list[Trial], members: list[int],
                 leaves: dict[str, tuple[int, ...]], select: Selection, total_steps: int, seed: int,
                 sweep_dir: Path):
        self.opts, self.space, self.base, self.trials, self.members = opts, space, base, trials, members
        self.leaves, self.select, self.total = leaves, select, total_steps
        self.interval = opts.interval
        self.ahead = False  # the exploit program compiled ahead (at the first evaluation that is not an exploit)
        self.seed, self.path = seed, sweep_dir / LINEAGE_FILE
        self.dims = {d.key: d for d in space.dimensions}
        traced = traced_fields(base)
        first = trials[members[0]].cfg
        # A switch (0 turns its piece of the program off) stays on the side of 0 the population is on.
        self.on = {k: (bool(getattr_dotted(first, k) > 0) if is_switch(traced[k]) else None) for k in self.dims}
        self.rng = np.random.default_rng([seed, 0x9B7])
        self.rows: list[dict[str, Any]] = []
        self.written: dict[str, Any] | None = None  # the last row on disk

    # -- resume ---------------------------------------------------------------------------------
    def on_start(self, meta: dict | None) -> None:
        """A fresh start records step 0; a resumed one takes the RNG, the hyperparameters and the
        lineage up to its checkpoint (rows written past it are dropped: they are made again)."""
        saved = (meta or {}).get("search", {}).get("pbt")
        if saved is None:
            self.rng = np.random.default_rng([self.seed, 0x9B7])
            self.rows = []
            self._record(0, list(self.members), list(range(len(self.members))))
            self.write()
            return
        self.rng = _rng_from_json(saved["rng"])
        for t, values in saved["values"].items():
            self._set(int(t), {k: self._typed(k, v) for k, v in values.items()})
        step = int(meta["step"])
        self.rows = [r for r in read_parquet(self.path).to_pylist() if r["step"] <= step] if self.path.is_file() else []

    def search_state(self) -> dict:
        """What a checkpoint's meta holds, asked as it is taken: the lineage up to its step is written
        first, so a resume from it finds every row it needs (not at every interval: rewriting the
        whole table there made a long run's exploits cost more and more)."""
        if self.rows and self.rows[-1] is not self.written:
            self.write()
        return {"pbt": {"rng": _rng_json(self.rng),
                        "values": {str(t): dict(self.trials[t].values) for t in self.members}}}

    def _typed(self, key: str, value: Any) -> Any:
        """A value read back from JSON as the space holds it (lists were tuples, ints stay ints)."""
        dim = self.dims[key]
        if dim.finite:
            for v in dim.values:
                if v == value or (isinstance(v, tuple) and list(v) == value):
                    return v
        return float(value) if isinstance(value, float) or not dim.finite else value

    def final_from_lineage(self) -> None:
        """A finished sweep resumed: each member's hyperparameters are its last row of the lineage."""
        if not self.path.is_file():
            return
        for row in read_parquet(self.path).to_pylist():
            if row["trial"] in self.members:
                self._set(row["trial"], {k: self._typed(k, row[k]) for k in self.dims})

    # -- exploit and explore --------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.interval == 0 and step < self.total

    def parents(self, engine: Engine) -> np.ndarray:
        """Slot -> the slot it copies (itself when it keeps its state): the bottom quantile of the live
        members each copies one drawn from the top quantile."""
        parents = np.arange(len(engine.slots))
        live = [int(s) for s in np.flatnonzero(engine.live)]
        k = int(len(live) * self.opts.quantile)
        if len(live) >= 2:
            k = max(k, 1)
        if k == 0:
            return parents
        sel, sign = self.select, (-1.0 if self.select.higher else 1.0)

        def badness(slot: int) -> tuple[float, int]:
            value = engine.books[engine.slots[slot]].last_eval.get(sel.split, {}).get(sel.metric, math.nan)
            return (math.inf if math.isnan(value) else sign * value, engine.slots[slot])

        ranked = sorted(live, key=badness)
        top, bottom = ranked[:k], ranked[-k:]
        for slot in bottom:
            parents[slot] = top[int(self.rng.integers(len(top)))]
        return parents

    def at_evaluation(self, engine: Engine) -> None:
        if not self.due(engine.step):
            if not self.ahead:
                # The first exploit compiled beside the calls up to it, not at it (``compile_ahead``).
                engine.pop.exploit_ahead(np.arange(len(engine.slots)), self.hparams(engine.slots))
                self.ahead = True
            return
        slots = engine.slots
        parents = self.parents(engine)
        for slot, parent in enumerate(parents):
            if parent == slot:
                continue
            values = dict(self.trials[slots[parent]].values)
            for key, dim in self.dims.items():
                if key not in INHERITED:
                    values[key] = explore(values[key], dim, self.on[key], self.opts, self.rng)
            self._set(slots[slot], values)
        engine.pop.exploit(parents, self.hparams(slots))
        self._record(engine.step, slots, [int(p) for p in parents])

    def hparams(self, slots: list[int | None]) -> dict[int, np.ndarray]:
        """{leaf index: every slot's value} of each key with a home in the state (padding repeats the
        first member)."""
        out = {}
        for key, indices in self.leaves.items():
            per = [self.trials[self.members[0] if t is None else t].values[key] for t in slots]
            for i in indices:
                out[i] = np.asarray(per)
        return out

    def _set(self, trial: int, values: dict[str, Any]) -> None:
        """A member's hyperparameters now: its record (``trials.parquet``), overrides and config."""
        t = self.trials[trial]
        fixed = t.overrides[: len(t.overrides) - len(t.values)]
        t.values = {k: values[k] for k in self.dims}
        t.overrides = fixed + [f"{k}={format_value(v)}" for k, v in t.values.items()]
        t.cfg = apply_overrides(self.base, t.overrides)

    # -- lineage --------------------------------------------------------------------------------
    def _record(self, step: int, slots: list[int | None], parents: list[int]) -> None:
        """One row per member: its slot, its trial, the trial whose state it holds now, its values."""
        for slot, t in enumerate(slots):
            if t is not None:
                self.rows.append({"step": step, "member": slot, "trial": t, "parent": slots[parents[slot]],
                                  **{k: self.trials[t].values[k] for k in self.dims}})

    def table(self) -> pa.Table:
        columns: dict[str, Any] = {
            "step": pa.array([r["step"] for r in self.rows], pa.int64()),
            "member": pa.array([r["member"] for r in self.rows], pa.int32()),
            "trial": pa.array([r["trial"] for r in self.rows], pa.int32()),
            "parent": pa.array([r["parent"] for r in self.rows], pa.int32()),
        }
        for key in self.dims:
            values = [r[key] for r in self.rows]
            columns[key] = (pa.array([format_value(v) for v in values], pa.string())
                            if any(isinstance(v, tuple) for v in values) else pa.array(values))
        return pa.table(columns)

    def write(self) -> None:
        write_parquet(self.table(), self.path)
        self.written = self.rows[-1] if self.rows else None


def getattr_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
