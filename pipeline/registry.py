"""Where model families, objectives, optimizers and schedules register: once each, by name, from the
package or an experiment file.

A family brings its frozen config dataclass (a ``ModelConfig`` with its own fields), a build
function, and optionally an input check and an analytic FLOP count; an objective brings its
loss and metrics (``pipeline.objectives.Objective``); an optimizer brings an Optax factory and
the traced hyperparameters it takes; a schedule brings the factory of its multiplier. Nothing
else in the code lists their names. The built-ins register when ``pipeline.models``,
``pipeline.objectives`` and ``pipeline.optim`` are imported, which a lookup does on first use,
so this module stays free of JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError


class RegistryError(PipelineError):
    """A family, objective, optimizer or schedule that cannot be registered or found."""


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model family's config: ``name`` selects the family, the rest are its own fields.

    A family subclasses it with a frozen dataclass of the fields its build function reads and
    registers it (``pipeline.register_model``). ``validate`` raises ``ConfigError`` for values
    that parse but make no sense. It is defined here, beside the check that a registered config
    class subclasses it; ``pipeline.config.ModelConfig`` and ``pipeline.ModelConfig`` are this class.
    """

    name: str = ""

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class ModelFamily:
    """One model family. ``build(cfg, feature_shape, out_features, rngs) -> nnx.Module``.

    ``check(cfg, info)`` raises ``ConfigError`` when the family cannot take a dataset (before
    anything is built); ``flops(cfg, feature_shape, out_features, batch)`` is the analytic
    FLOP count of one training step, where the family has one (else XLA's cost analysis).
    """

    name: str
    config: type
    build: Callable[..., Any]
    check: Callable[..., None] | None = None
    flops: Callable[..., float] | None = None
    origin: str = ""  # the file that registered it: errors name it


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer. ``factory(**traced) -> optax.GradientTransformation``, called with one traced
    scalar for each name in ``traced`` (fields of ``OptimizerConfig``), at every update.

    A factory that takes ``weight_decay`` applies it itself (decoupled, as ``optax.adamw`` does);
    for one that does not, the pipeline adds coupled L2 to the gradient in front of it.
    """

    name: str
    factory: Callable[..., Any]
    traced: tuple[str, ...]
    origin: str = ""


@dataclass(frozen=True)
class ScheduleEntry:
    """One schedule. ``factory(cfg, total_steps) -> optax.Schedule | None``: the multiplier of the
    (traced) peak learning rate at each update count, or None for a constant 1 (no piece at all)."""

    name: str
    factory: Callable[..., Any]
    origin: str = ""


_FAMILIES: dict[str, ModelFamily] = {}
_OBJECTIVES: dict[str, Any] = {}
_OPTIMIZERS: dict[str, OptimizerEntry] = {}
_SCHEDULES: dict[str, ScheduleEntry] = {}
_BUILTINS = {"model": "pipeline.models", "objective": "pipeline.objectives", "optimizer": "pipeline.optim",
             "schedule": "pipeline.optim"}
_TABLES: dict[str, dict[str, Any]] = {"model": _FAMILIES, "objective": _OBJECTIVES, "optimizer": _OPTIMIZERS,
                                      "schedule": _SCHEDULES}


def _caller_file(depth: int = 2) -> str:
    return str(Path(sys._getframe(depth).f_code.co_filename))


def _register(table: dict[str, Any], kind: str, name: str, entry: Any, origin: str) -> None:
    # The built-ins register first, whatever a user's file registers before its first lookup: a clash
    # with a built-in name is then always the user's registration, and names the user's file.
    _load_builtins(kind)
    old = table.get(name)
    # Loading the same experiment file again (a sweep, a notebook re-run) re-registers: that is no clash.
    if old is not None and old.origin != origin:
        raise RegistryError(f"{origin}: {kind} '{name}' is registered twice (first in {old.origin})")
    table[name] = entry


def register_model(name: str, config: type, build: Callable[..., Any], *, check: Callable[..., None] | None = None,
                   flops: Callable[..., float] | None = None) -> ModelFamily:
    """Register a model family under ``name`` (``model.name=NAME`` selects it). Returns the family."""
    origin = _caller_file()
    _check_config_class(name, config, origin)
    family = ModelFamily(name, config, build, check, flops, origin)
    _register(_FAMILIES, "model", name, family, origin)
    return family


def register_objective(objective: Any) -> Any:
    """Register an ``Objective`` under its ``name`` (``objective=NAME`` selects it). Returns it."""
    origin = _caller_file()
    objective = dataclasses.replace(objective, origin=origin)
    _register(_OBJECTIVES, "objective", objective.name, objective, origin)
    return objective


def register_optimizer(name: str, factory: Callable[..., Any], *,
                       traced: tuple[str, ...] = ("learning_rate",)) -> OptimizerEntry:
    """Register an Optax optimizer under ``name`` (``optimizer.name=NAME`` selects it). Returns the entry.

    ``factory`` is called with the ``traced`` fields of ``OptimizerConfig`` as keyword arguments
    (traced scalars of the optimizer state) and returns an ``optax.GradientTransformation``.
    """
    origin = _caller_file()
    traced = (traced,) if isinstance(traced, str) else tuple(traced)
    _check_factory("optimizer", name, factory, origin, f"keyword arguments ({', '.join(traced)})",
                   **dict.fromkeys(traced, 0.0))
    entry = OptimizerEntry(name, factory, traced, origin)
    _register(_OPTIMIZERS, "optimizer", name, entry, origin)
    return entry


def register_schedule(name: str, factory: Callable[..., Any]) -> ScheduleEntry:
    """Register a schedule under ``name`` (``optimizer.schedule=NAME`` selects it). Returns the entry.

    ``factory(cfg, total_steps)`` gets the ``OptimizerConfig`` (its ``warmup_steps`` at most
    ``total_steps``) and the number of updates, and returns the multiplier of the peak learning
    rate as a function of the update count (``optax.Schedule``), or None for a constant 1.
    """
    origin = _caller_file()
    _check_factory("schedule", name, factory, origin, "(cfg, total_steps)", None, 1)
    entry = ScheduleEntry(name, factory, origin)
    _register(_SCHEDULES, "schedule", name, entry, origin)
    return entry


def _check_factory(kind: str, name: str, factory: Any, origin: str, wanted: str, *args: Any, **kwargs: Any) -> None:
    """A factory the pipeline could not call as documented fails at registration, naming the file."""
    if not callable(factory):
        raise RegistryError(f"{origin}: {kind} '{name}': its factory {factory!r} is not callable")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: it will be called as it is
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise RegistryError(f"{origin}: {kind} '{name}': its factory{signature} cannot be called with "
                            f"{wanted} ({exc})") from None


def _load_builtins(kind: str) -> None:
    importlib.import_module(_BUILTINS[kind])


def _lookup(table: dict[str, Any], kind: str, key: str, name: str) -> Any:
    _load_builtins(kind)
    if name not in table:
        raise RegistryError(f"bad value for '{key}': unknown {kind} '{name}'; "
                            f"registered {kind}s: {', '.join(sorted(table))}")
    return table[name]


def family(name: str) -> ModelFamily:
    return _lookup(_FAMILIES, "model", "model.name", name)


def objective(name: str) -> Any:
    return _lookup(_OBJECTIVES, "objective", "objective", name)


def optimizer(name: str) -> OptimizerEntry:
    return _lookup(_OPTIMIZERS, "optimizer", "optimizer.name", name)


def schedule(name: str) -> ScheduleEntry:
    return _lookup(_SCHEDULES, "schedule", "optimizer.schedule", name)


def is_registered(name: str, kind: str = "model") -> bool:
    _load_builtins(kind)
    return name in _TABLES[kind]


class RegisteredNames:
    """The names of one kind registered so far, read at each use: config's choices for a registry
    (``name in names`` and iteration load the built-ins first; iteration is sorted)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and is_registered(name, self.kind)

    def __iter__(self) -> Iterator[str]:
        _load_builtins(self.kind)
        return iter(sorted(_TABLES[self.kind]))


# Types an override (``model.FIELD=TEXT``) can be parsed into: see config.parse_value.
_SCALARS = (int, float, str, bool)


def parseable(typ: Any) -> bool:
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ in _SCALARS:
        return True
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return len(inner) == 1 and parseable(inner[0])
    return False


def _check_config_class(name: str, config: type, origin: str) -> None:
    where = f"{origin}: model '{name}'"
    if not (isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, ModelConfig)):
        raise RegistryError(f"{where}: its config {getattr(config, '__name__', config)!r} must be a "
                            "@dataclass(frozen=True) subclass of pipeline.ModelConfig")
    if not config.__dataclass_params__.frozen:
        raise RegistryError(f"{where}: {config.__name__} must be a frozen dataclass (@dataclass(frozen=True))")
    try:
        default = config()
    except TypeError as exc:
        raise RegistryError(f"{where}: {config.__name__}() needs a default for every field ({exc})") from None
    if default.name != name:
        raise RegistryError(f"{where}: {config.__name__}.name defaults to {default.name!r}; declare "
                            f"`name: str = {name!r}`")
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if not parseable(hints[f.name]):
            raise RegistryError(f"{where}: field {config.__name__}.{f.name} has type {hints[f.name]} that "
                                "overrides cannot read; use int, float, str, bool, tuple[int, ...] or an optional one")
