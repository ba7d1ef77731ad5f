"""Search spaces spelled as text: ``choice(a;b)``, ``range(lo,hi)``, ``uniform``, ``loguniform``, ...

One spelling serves the command line (``optimizer.learning_rate='loguniform(1e-4,1e-1)'``)
and an experiment's ``sweep()``. A value without a space function is a fixed override.
Every value is parsed into the declared type of its config key, so a space that cannot
produce a valid config is refused before anything runs.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import Config, ConfigError, leaf_type, parse_value, resolve_key, split_override

FUNCTIONS = ("choice", "range", "uniform", "loguniform", "linspace", "logspace")
MAX_VALUES = 100_000  # values of one dimension (a sweep has at most strategy.MAX_TRIALS trials)
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)


class SpaceError(ConfigError):
    """A search space that cannot be used, naming the key and the value at fault."""


@dataclass(frozen=True)
class Dimension:
    """One swept key: a finite list of values, or a continuous interval (random search only)."""

    key: str
    text: str  # as the user spelled it, for records and errors
    kind: str  # one of FUNCTIONS
    values: tuple[Any, ...] = ()  # the finite values (choice, range, linspace, logspace)
    low: float = 0.0  # the interval (uniform, loguniform)
    high: float = 0.0

    @property
    def finite(self) -> bool:
        return self.kind not in ("uniform", "loguniform")

    @property
    def log_scale(self) -> bool:
        return self.kind in ("loguniform", "logspace")

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "uniform":
            return float(rng.uniform(self.low, self.high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class Space:
    """Swept dimensions in the order given, and fixed ``KEY=VALUE`` overrides."""

    dimensions: tuple[Dimension, ...]
    fixed: tuple[str, ...]

    def spelling(self) -> dict[str, Any]:
        """The space as text: what ``sweep.json`` records and a resume compares."""
        return {"dimensions": {d.key: d.text for d in self.dimensions}, "fixed": list(self.fixed)}


def parse_space(cfg: Config, items: dict[str, str] | list[str]) -> Space:
    """``{"key": "loguniform(1e-4,1e-1)", "steps": "50"}`` or ``["key=text", ...]`` -> Space."""
    pairs = [split_override(i) for i in items] if isinstance(items, list) else list(items.items())
    dims: dict[str, Dimension] = {}
    fixed: list[str] = []
    for raw_key, text in pairs:
        text = str(text)
        key = resolve_key(cfg, raw_key.strip())
        typ = leaf_type(cfg, key)  # unknown keys fail here, with the closest valid names
        match = _CALL.match(text)
        if match and match.group(1) in FUNCTIONS:
            dims.pop(key, None)
            dims[key] = parse_dimension(key, text, match.group(1), match.group(2), typ)
        elif match and not text.lstrip().startswith("("):
            raise SpaceError(f"bad space for '{key}': unknown function '{match.group(1)}' in {text!r}; "
                             f"use one of {', '.join(FUNCTIONS)}")
        else:
            parse_value(key, text, typ)  # a bad fixed value fails now, not after the folder exists
            dims.pop(key, None)  # a fixed value pins a key that the space would sweep
            fixed.append(f"{key}={text}")
    return Space(tuple(dims.values()), tuple(fixed))


def _numbers(key: str, text: str, args: str, count: tuple[int, ...]) -> list[float]:
    parts = [p.strip() for p in args.split(",")] if args.strip() else []
    if len(parts) not in count:
        want = " or ".join(str(c) for c in count)
        raise SpaceError(f"bad space for '{key}': {text!r} takes {want} numbers, not {len(parts)}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SpaceError(f"bad space for '{key}': {text!r} has a value that is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise SpaceError(f"bad space for '{key}': {text!r} has a value that is not finite")
    return values


def _base_type(typ: Any) -> Any:
    """``int | None`` -> ``int``."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(typ) if a is not type(None))
    return typ


def parse_dimension(key: str, text: str, fn: str, args: str, typ: Any) -> Dimension:
    base = _base_type(typ)
    numeric = base in (int, float)
    if fn == "choice":
        sep = ";" if ";" in args or typing.get_origin(base) is tuple else ","
        parts = [p.strip() for p in args.split(sep)]
        if not args.strip() or any(p == "" for p in parts):
            raise SpaceError(f"bad space for '{key}': {text!r} has an empty choice")
        values = tuple(parse_value(key, p, typ) for p in parts)
        return Dimension(key, text, fn, values)
    if not numeric:
        raise SpaceError(f"bad space for '{key}': {fn}(...) needs a numeric key; use choice(a;b;...)")
    if fn == "range":
        nums = _numbers(key, text, args, (1, 2, 3))
        if not all(v.is_integer() for v in nums):
            raise SpaceError(f"bad space for '{key}': {text!r} takes integers")
        lo, hi, stride = [(0.0, nums[0], 1.0), (*nums, 1.0), tuple(nums)][len(nums) - 1]
        if stride <= 0:
            raise SpaceError(f"bad space for '{key}': {text!r} needs a positive step")
        if lo > hi:
            raise SpaceError(f"bad space for '{key}': {text!r} has low {lo:g} > high {hi:g}")
        if (int(hi) - int(lo) + int(stride) - 1) // int(stride) > MAX_VALUES:
            raise SpaceError(f"bad space for '{key}': {text!r} has more than {MAX_VALUES} values")
        values = tuple(base(v) for v in range(int(lo), int(hi), int(stride)))
        if not values:
            raise SpaceError(f"bad space for '{key}': {text!r} is empty (the high end is excluded)")
        return Dimension(key, text, fn, values)
    if base is not float:
        raise SpaceError(f"bad space for '{key}': {fn}(...) needs a float key; '{key}' is an integer, use range(...)")
    if fn in ("uniform", "loguniform"):
        lo, hi = _numbers(key, text, args, (2,))
        _check_interval(key, text, fn, lo, hi)
        return Dimension(key, text, fn, low=lo, high=hi)
    lo, hi, n = _numbers(key, text, args, (3,))
    if not n.is_integer() or n < 1:
        raise SpaceError(f"bad space for '{key}': {text!r} needs a positive whole count")
    if n > MAX_VALUES:
        raise SpaceError(f"bad space for '{key}': {text!r} has more than {MAX_VALUES} values")
    _check_interval(key, text, fn, lo, hi, allow_equal=True)
    if fn == "logspace":
        values = np.geomspace(lo, hi, int(n))
    else:
        values = np.linspace(lo, hi, int(n))
    return Dimension(key, text, fn, tuple(float(v) for v in values))


def _check_interval(key: str, text: str, fn: str, lo: float, hi: float, allow_equal: bool = False) -> None:
    if lo > hi:
        raise SpaceError(f"bad space for '{key}': {text!r} has low {lo:g} > high {hi:g}")
    if lo == hi and not allow_equal:
        raise SpaceError(f"bad space for '{key}': {text!r} is an empty interval (low = high = {lo:g})")
    if fn.startswith("log") and lo <= 0:
        raise SpaceError(f"bad space for '{key}': {text!r} is a log scale and must stay above zero")


def format_value(value: Any) -> str:
    """The text of an override that parses back to exactly ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def override_list(overrides: list[str] | dict[str, Any] | None) -> list[str]:
    """``KEY=VALUE`` strings, from a list of them or a ``{key: value}`` dict (values spelled as on the command line)."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{k}={format_value(v)}" for k, v in overrides.items()]
    return list(overrides)
