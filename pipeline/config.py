"""Typed experiment configs, dotted overrides and a JSON round trip.

A config is a tree of dataclasses. ``apply_overrides(cfg, ["optimizer.learning_rate=3e-3"])``
returns a new config; an unknown key or a badly typed value raises ``ConfigError`` naming
the closest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError


class ConfigError(PipelineError):
    """A config key or value that cannot be used."""


@dataclass(frozen=True)
class ModelConfig:
    """Model family and its shape. Each family reads the fields it needs."""

    name: str = "mlp"  # mlp | cnn | transformer
    # mlp
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"  # sigmoid | tanh | relu | gelu
    dropout: float = 0.0  # traced: changing it does not recompile
    # cnn
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    stride: int = 1
    pool: str = "max"  # max | avg | none
    norm: str = "none"  # none | layer | batch
    # transformer
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 0  # 0 means 4 * d_model
    context: int = 128
    position: str = "rotary"  # rotary | learned
    tie_embeddings: bool = True


@dataclass(frozen=True)
class OptimizerConfig:
    """Optax optimizer, schedule and clipping. Numeric fields are traced hyperparameters."""

    name: str = "adam"  # sgd | momentum | adam | adamw
    learning_rate: float = 1e-3
    schedule: str = "constant"  # constant | cosine | warmup_cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 0.0  # 0 turns global-norm clipping off


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how it is fed. ``data=NAME`` on the command line sets ``data.name``."""

    name: str = "digits"  # a dataset name in the store
    validation_fraction: float = 0.0  # > 0 carves a seeded validation split from train
    max_device_bytes: int = 2 * 1024**3  # larger training splits stream from disk
    shuffle_buffer: int = 16384  # rows mixed by the streaming reader
    prefetch: int = 4  # batches the streaming reader keeps ready


@dataclass(frozen=True)
class Config:
    """One experiment: what data, which model, how to optimise and for how long."""

    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0  # parameter initialisation and dropout
    data_seed: int | None = None  # order of batches; None means `seed`
    steps: int = 2000
    epochs: int = 0  # > 0 replaces `steps` by epochs * (train rows // batch_size)
    batch_size: int = 64
    eval_every: int = 500
    eval_batch_size: int = 512
    steps_per_call: int = 0  # 0 picks a value automatically
    label_smoothing: float = 0.0
    precision: str = "fp32"  # fp32 | bf16: compute in bfloat16, parameters and optimizer state in float32
    grad_accum: int = 1  # > 1 averages gradients of that many batches per update (optax.MultiSteps)
    ema_decay: float = 0.0  # > 0 keeps an exponential moving average of the parameters for evaluation
    patience: int = 0  # > 0 stops after that many evaluations without improvement of `best_metric`
    best_metric: str = ""  # evaluation metric that picks the best checkpoint; "" is the task's default
    checkpoint_every: int = 0  # 0 checkpoints at every evaluation
    checkpoint_keep: int = 3  # latest checkpoints kept, besides the best one
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # Config(data="digits") is shorthand for DataConfig(name=...)
            object.__setattr__(self, "data", DataConfig(name=self.data))

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed


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
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    if dataclasses.is_dataclass(node) and any(f.name == "name" for f in dataclasses.fields(node)):
        return key + ".name"
    return key


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``KEY=VALUE`` strings in order, type-checked against the config's fields."""
    for item in overrides:
        key, text = split_override(item)
        key = resolve_key(cfg, key)
        cfg = set_key(cfg, key, parse_value(key, text, leaf_type(cfg, key)))
    validate(cfg)
    return cfg


_CHOICES = {
    "model.name": ("mlp", "cnn", "transformer"),
    "model.activation": ("sigmoid", "tanh", "relu", "gelu"),
    "model.pool": ("max", "avg", "none"),
    "model.norm": ("none", "layer", "batch"),
    "model.position": ("rotary", "learned"),
    "optimizer.name": ("sgd", "momentum", "adam", "adamw"),
    "optimizer.schedule": ("constant", "cosine", "warmup_cosine"),
    "precision": ("fp32", "bf16"),
}


def validate(cfg: Config) -> None:
    """Reject values that parse but make no sense, naming the key."""
    flat = flat_keys(cfg)
    for key, allowed in _CHOICES.items():
        if key in flat and flat[key] not in allowed:
            raise ConfigError(f"bad value for '{key}': {flat[key]!r}; choose one of {', '.join(allowed)}")
    positive = ("steps", "batch_size", "eval_every", "eval_batch_size", "grad_accum", "checkpoint_keep")
    for key in positive:
        if flat[key] < 1:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must be at least 1")
    for key in ("epochs", "steps_per_call", "optimizer.warmup_steps", "patience", "checkpoint_every"):
        if flat[key] < 0:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must not be negative")
    if not 0.0 <= flat["data.validation_fraction"] < 1.0:
        fraction = flat["data.validation_fraction"]
        raise ConfigError(f"bad value for 'data.validation_fraction': {fraction} must be in [0, 1)")
    if not 0.0 <= flat["model.dropout"] < 1.0:
        raise ConfigError(f"bad value for 'model.dropout': {flat['model.dropout']} must be in [0, 1)")
    if not 0.0 <= flat["ema_decay"] < 1.0:
        raise ConfigError(f"bad value for 'ema_decay': {flat['ema_decay']} must be in [0, 1)")
    for key in ("label_smoothing", "optimizer.momentum", "optimizer.b1", "optimizer.b2"):
        if not 0.0 <= flat[key] < 1.0:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must be in [0, 1)")
    for key in ("optimizer.weight_decay", "optimizer.clip_norm"):
        if flat[key] < 0:
            raise ConfigError(f"bad value for '{key}': {flat[key]} must not be negative")
    for key in ("model.hidden", "model.channels"):
        if any(width < 1 for width in flat[key]):
            raise ConfigError(f"bad value for '{key}': {','.join(map(str, flat[key]))}: every width must be at least 1")
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
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, value)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
