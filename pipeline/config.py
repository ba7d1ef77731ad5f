"""Typed experiment configs, dotted overrides and a JSON round trip.

A config is a tree of dataclasses. ``apply_overrides(cfg, ["optimizer.learning_rate=3e-3"])``
returns a new config; an unknown key or a badly typed value raises ``ConfigError`` naming
the closest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.registry import ModelConfig, RegisteredNames, family


class ConfigError(PipelineError):
    """A config key or value that cannot be used."""


def traced(default: Any, *, switch: bool = False) -> Any:
    """A config field whose value is a traced array of the compiled program, not a constant baked into it.

    Changing it never recompiles, and a sweep may hold different values of it in one vmapped
    population. ``switch=True`` marks a field whose being zero or not turns a piece of the
    program off or on (dropout, weight decay, clipping, EMA, label smoothing): a sweep groups trials by
    that.
    """
    return field(default=default, metadata={"traced": True, "switch": switch})


def is_traced(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("traced"))


def is_switch(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("switch"))


@dataclass(frozen=True)
class OptimizerConfig:
    """Optax optimizer, schedule and clipping. Numeric fields are traced hyperparameters."""

    name: str = "adam"  # a registered optimizer (docs/optimizers.md): sgd, momentum, nesterov, adam, adamw, lion, ...
    learning_rate: float = traced(1e-3)
    schedule: str = "constant"  # a registered schedule: constant, cosine, warmup_cosine, linear, onecycle, ...
    warmup_steps: int = 0
    decay_rate: float = 0.1  # schedule=exponential: the multiplier reached at the last step
    weight_decay: float = traced(0.0, switch=True)
    momentum: float = traced(0.9)
    b1: float = traced(0.9)
    b2: float = traced(0.999)
    clip_norm: float = traced(0.0, switch=True)  # 0 turns global-norm clipping off


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how it is fed. ``data=NAME`` on the command line sets ``data.name``."""

    name: str = "digits"  # a dataset name in the store
    validation_fraction: float = 0.1  # carved from train when the dataset stores no validation split; 0: none
    validation_seed: int = 0  # which rows the carve holds out: the dataset's, the same for every trial
    max_device_bytes: int = 2 * 1024**3  # larger training splits stream from disk
    shuffle_buffer: int = 16384  # rows mixed by the streaming reader
    prefetch: int = 4  # batches the streaming reader keeps ready
    normalize: str = "auto"  # standardize features from the training split's statistics: auto | true | false
    augment: str = ""  # image augmentation in the train step, a comma list: flip, crop:PAD, cutout:N, mixup:ALPHA


@dataclass(frozen=True)
class SelectionConfig:
    """Which split the decisions read: the best checkpoint, early stopping, halving rungs, sweep ranking.

    ``split=""`` (the default) is the validation split; a run without one selects nothing (its best is
    its final step) and refuses what needs a selection. ``split="test"`` selects on test, explicitly:
    the test metrics are then optimistic, and the run's and the sweep's summaries say so.
    """

    split: str = ""  # "" (validation) | test


@dataclass(frozen=True)
class MeshConfig:
    """How the devices are laid out: ``mesh.data`` x ``mesh.fsdp`` must be the device count.

    Batches are split over both axes; parameters and optimizer state are sharded over ``fsdp``
    (``pipeline.sharding``). The product is checked when the mesh is built, against the devices
    of every process.
    """

    data: int = 0  # data-parallel size; 0 takes the devices `fsdp` leaves
    fsdp: int = 1  # devices each large parameter is sharded over; 1 replicates every parameter


@dataclass(frozen=True)
class Config:
    """One experiment: what data, which model, how to optimise and for how long."""

    data: DataConfig = field(default_factory=DataConfig)
    objective: str = ""  # loss and metrics by name; "" is the dataset task's default
    seed: int = traced(0)  # parameter initialisation and dropout
    data_seed: int | None = traced(None)  # order of batches; None means `seed`
    steps: int = 2000
    epochs: int = 0  # > 0 replaces `steps` by epochs * (train rows // batch_size)
    batch_size: int = 64
    eval_every: int = 500
    eval_batch_size: int = 512
    steps_per_call: int = 0  # 0 picks a value automatically
    label_smoothing: float = traced(0.0, switch=True)  # 0 leaves the smoothing term out of the loss
    precision: str = "fp32"  # fp32 | bf16: compute in bfloat16, parameters and optimizer state in float32
    grad_accum: int = 1  # > 1 averages gradients of that many batches per update (optax.MultiSteps)
    ema_decay: float = traced(0.0, switch=True)  # > 0 keeps a moving average of the parameters for evaluation
    patience: int = 0  # > 0 stops after that many evaluations without improvement of `best_metric`
    best_metric: str = ""  # evaluation metric that picks the best checkpoint; "" is the task's default
    selection: SelectionConfig = field(default_factory=SelectionConfig)  # selection.split: what decisions read
    checkpoint_every: int = 0  # steps between latest checkpoints; 0: by time (checkpoint_minutes)
    checkpoint_minutes: float = 5.0  # with checkpoint_every=0: the latest is saved this often, at the end, on signals
    checkpoint_keep: int = 3  # latest checkpoints kept, besides the best one
    plot: bool = True  # draw curves.png in a background process once the summary is written
    log: str = ""  # trackers besides Parquet, a comma list: tensorboard, wandb, mlflow
    mlflow_uri: str = ""  # `log.mlflow_uri=URI`: MLflow tracking URI; "" is MLFLOW_TRACKING_URI, else sqlite:///mlruns.db
    profile: str = ""  # START:STEPS traces those steps with jax.profiler into RUN_DIR/profile/
    mesh: MeshConfig = field(default_factory=MeshConfig)  # mesh.data x mesh.fsdp devices
    model: ModelConfig = field(default_factory=lambda: default_model())
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # Config(data="digits") is shorthand for DataConfig(name=...)
            object.__setattr__(self, "data", DataConfig(name=self.data))
        if isinstance(self.model, str):  # Config(model="cnn"): that family's defaults
            object.__setattr__(self, "model", model_config(self.model))

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


DEFAULT_MODEL = "mlp"


def model_config(name: str, carry: ModelConfig | None = None) -> ModelConfig:
    """The default config of family ``name``; fields it shares with ``carry`` keep ``carry``'s values."""
    cls = family(name).config
    if carry is None:
        return cls()
    own = {f.name for f in dataclasses.fields(cls)} - {"name"}
    return cls(**{f.name: getattr(carry, f.name) for f in dataclasses.fields(carry) if f.name in own})


def default_model() -> ModelConfig:
    return model_config(DEFAULT_MODEL)


def traced_fields(cfg: Any, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Dotted key -> field of every field marked ``traced`` in a config tree (the model's own included)."""
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(traced_fields(value, prefix + f.name + "."))
        elif is_traced(f):
            out[prefix + f.name] = f
    return out


def flat_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf of a config tree."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            out.update(flat_keys(value, key + "."))
        else:
            out[key] = value
    return out


@functools.cache  # get_type_hints evaluates every annotation: a sweep of thousands of trials asks it for each key
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaf_type(cfg: Any, key: str) -> Any:
    """The declared type of a dotted key, or ConfigError with the closest valid keys."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        hints = _field_types(type(node))
        if part not in hints:
            raise unknown_key(cfg, key)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(node, part)):
                raise unknown_key(cfg, key)
            return hints[part]
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise unknown_key(cfg, key)
    raise unknown_key(cfg, key)


def unknown_key(cfg: Any, key: str) -> ConfigError:
    valid = list(flat_keys(cfg))
    if key.startswith("model.") and isinstance(getattr(cfg, "model", None), ModelConfig):
        names = [f.name for f in dataclasses.fields(cfg.model)]
        fields = ", ".join(names)
        close = difflib.get_close_matches(key.removeprefix("model."), names, n=3, cutoff=0.75)
        hint = f"did you mean {', '.join('model.' + c for c in close)}? " if close else ""
        return ConfigError(f"unknown config key '{key}'; {hint}model '{cfg.model.name}' has the fields: {fields}")
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def parse_value(key: str, text: str, typ: Any) -> Any:
    """Parse the text of an override into the declared type of its key."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(key, text, inner[0])
    try:
        if typ is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typ is int:
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError(text)
            return int(as_float)
        if typ is float:
            number = float(text)
            if not math.isfinite(number):  # nan or inf would only fail later, inside a run
                raise ValueError(text)
            return number
        if typ is str:
            return text
        if origin is tuple:
            elem = args[0]
            parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(parse_value(key, p.strip(), elem) for p in parts)
    except (ValueError, ConfigError):
        raise ConfigError(
            f"bad value for '{key}': {text!r} is not {_type_name(typ)}"
        ) from None
    raise ConfigError(f"key '{key}' has a type that overrides cannot set ({typ})")


_PLURAL = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans"}


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is tuple:
        return f"a comma-separated list of {_PLURAL.get(typing.get_args(typ)[0], 'values')}"
    return {int: "an integer", float: "a finite number", bool: "a boolean", str: "a string"}.get(
        typ, str(typ)
    )


def set_key(cfg: Any, key: str, value: Any) -> Any:
    """A copy of ``cfg`` with the dotted ``key`` set to an already typed ``value``."""
    head, _, rest = key.partition(".")
    if rest:
        return dataclasses.replace(cfg, **{head: set_key(getattr(cfg, head), rest, value)})
    return dataclasses.replace(cfg, **{head: value})


def split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE")
    key, _, text = item.partition("=")
    return key.strip(), text.strip()


def resolve_key(cfg: Any, key: str) -> str:
    """``data`` means ``data.name``: a section given a value sets its ``name``."""
    if key == "log.mlflow_uri":  # `log` is a comma list, its one option a field of its own
        return "mlflow_uri"
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    if dataclasses.is_dataclass(node) and any(f.name == "name" for f in dataclasses.fields(node)):
        return key + ".name"
    return key


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``KEY=VALUE`` strings in order, type-checked against the config's fields.

    ``model.name`` goes first whatever its position: it picks the family whose fields the other
    ``model.*`` keys name. A new family starts from its defaults, keeping the fields it shares
    with the old one.
    """
    pairs = [split_override(item) for item in overrides]
    pairs.sort(key=lambda kv: resolve_key(cfg, kv[0]) != "model.name")
    for key, text in pairs:
        key = resolve_key(cfg, key)
        value = parse_value(key, text, leaf_type(cfg, key))
        if key == "model.name" and isinstance(cfg, Config):
            cfg = dataclasses.replace(cfg, model=model_config(value, carry=cfg.model))
        else:
            cfg = set_key(cfg, key, value)
    validate(cfg)
    return cfg


_CHOICES = {
    "data.normalize": ("auto", "true", "false"),
    "optimizer.name": RegisteredNames("optimizer"),  # pipeline.register_optimizer
    "optimizer.schedule": RegisteredNames("schedule"),  # pipeline.register_schedule
    "precision": ("fp32", "bf16"),
}


# Sane upper bounds: a value past them is a typo (or hostile), refused before any work starts.
_AT_MOST = {
    "steps": 10**9, "epochs": 10**6, "batch_size": 10**8, "eval_every": 10**9, "eval_batch_size": 10**8,
    "steps_per_call": 10**5, "grad_accum": 10**4, "patience": 10**9, "checkpoint_every": 10**9,
    "checkpoint_keep": 10**4, "checkpoint_minutes": 10**6, "optimizer.warmup_steps": 10**9,
    "data.shuffle_buffer": 10**9, "data.prefetch": 10**4, "data.max_device_bytes": 2**60,
    "mesh.data": 2**20, "mesh.fsdp": 2**20,
}


TRACKERS = ("tensorboard", "wandb", "mlflow")  # `log=`; Parquet is always on


def tracker_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip() and n.strip() != "parquet"]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"bad value for 'log': unknown tracker '{name}'; choose from {', '.join(TRACKERS)} "
                              "(Parquet is always on)")
    return names


def profile_window(text: str) -> tuple[int, int] | None:
    """``profile=START:STEPS`` as (start, steps), or None when empty."""
    if not text:
        return None
    start, _, steps = text.partition(":")
    try:
        first, count = int(start), int(steps)
    except ValueError:
        first = count = -1
    if first < 0 or count < 1:
        raise ConfigError(f"bad value for 'profile': {text!r} is not START:STEPS (a step and a positive count)")
    return first, count


def validate(cfg: Config) -> None:
    """Reject values that parse but make no sense, naming the key."""
    family(cfg.model.name)  # an unknown family fails here, listing the registered ones
    # By name, not identity: an experiment file loaded again (a notebook, a sweep) makes a new class object.
    if type(cfg.model).__qualname__ != family(cfg.model.name).config.__qualname__:
        raise ConfigError(f"bad value for 'model': a {type(cfg.model).__name__} is not the config of model "
                          f"'{cfg.model.name}' ({family(cfg.model.name).config.__name__})")
    cfg.model.validate()
    tracker_names(cfg.log)
    profile_window(cfg.profile)
    flat = flat_keys(cfg)
    for key, allowed in _CHOICES.items():
        if key in flat and flat[key] not in allowed:
            raise ConfigError(f"bad value for '{key}': {flat[key]!r}; choose one of {', '.join(allowed)}")
    positive = ("steps", "batch_size", "eval_every", "eval_batch_size", "grad_accum", "checkpoint_keep",
                "data.shuffle_buffer", "data.prefetch", "mesh.fsdp")
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must be at least 1")
    for key, most in _AT_MOST.items():
        if key in flat and flat[key] is not None and flat[key] > most:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must be at most {most:_}")
    for key in ("seed", "data_seed", "data.validation_seed"):
        if flat[key] is not None and not 0 <= flat[key] < 2**32:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must be between 0 and 4294967295")
    if flat["data.max_device_bytes"] < 0:
        raise ConfigError(f"bad value for 'data.max_device_bytes': {flat['data.max_device_bytes']} must not be "
                          "negative (0 streams every dataset from disk)")
    for key in ("epochs", "steps_per_call", "optimizer.warmup_steps", "patience", "checkpoint_every",
                "checkpoint_minutes", "mesh.data"):
        if flat[key] < 0:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must not be negative")
    if flat["selection.split"] not in ("", "validation", "test"):
        raise ConfigError(f"bad value for 'selection.split': {flat['selection.split']!r}; choose validation "
                          "(the default, also spelled as nothing) or test")
    if not 0.0 <= flat["data.validation_fraction"] < 1.0:
        fraction = flat["data.validation_fraction"]
        raise ConfigError(f"bad value for 'data.validation_fraction': {fraction} must be in [0, 1)")
    if not 0.0 <= flat["ema_decay"] < 1.0:
        raise ConfigError(f"bad value for 'ema_decay': {flat['ema_decay']} must be in [0, 1)")
    for key in ("label_smoothing", "optimizer.momentum", "optimizer.b1", "optimizer.b2"):
        if not 0.0 <= flat[key] < 1.0:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must be in [0, 1)")
    for key in ("optimizer.weight_decay", "optimizer.clip_norm"):
        if flat[key] < 0:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must not be negative")
    if flat["optimizer.learning_rate"] <= 0:
        raise ConfigError("bad value for 'optimizer.learning_rate': must be positive")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from ``to_dict`` output (lists become tuples)."""
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in hints:
            raise ConfigError(f"unknown config key '{name}' in saved config")
        typ = hints[name]
        if typ is ModelConfig:  # the family's own config class, chosen by its saved name
            kwargs[name] = from_dict(family(value.get("name", DEFAULT_MODEL)).config, value)
        elif dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
