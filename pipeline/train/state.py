"""The train state: a pytree of arrays and nothing with behaviour; and the static spec of its step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from pipeline.config import Config, ConfigError, is_switch, traced_fields
from pipeline.data.dataset import DatasetInfo
from pipeline.errors import PipelineError, typed_line
from pipeline.models import build_model
from pipeline.models.normalize import Standardized
from pipeline.objectives import Objective, resolve
from pipeline.optim import make_optimizer
from pipeline.registry import family
from pipeline.train.augment import Augment, augment_plan, parse_augment


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of nnx.Param
    rest: Any  # every other model variable (norm statistics, dropout RNG streams as raw key data, ...)
    opt_state: Any  # holds the traced optimizer hyperparameters
    step: jax.Array  # int32 count of applied updates
    hparams: dict[str, jax.Array]  # traced top-level hyperparameters (label smoothing, EMA decay)
    ema: Any = None  # moving average of params when cfg.ema_decay > 0, else None


@dataclass(frozen=True)
class StepSpec:
    """What the compiled step depends on besides the state; bound with functools.partial."""

    graphdef: Any  # the model in train mode
    eval_graphdef: Any  # the same model in eval mode (dropout off, batch norm on running statistics)
    tx: optax.GradientTransformation
    objective: Objective
    batch_size: int
    compute_dtype: Any  # jnp.float32 or jnp.bfloat16
    key_leaves: tuple[bool, ...] = ()  # which leaves of ``rest`` are PRNG keys (kept as raw data in the state)
    unroll: int = 1  # steps per iteration of a call's scan (``calls.scan_unroll``); the results are the same
    augment: Augment | None = None  # ``data.augment`` (pipeline/train/augment.py): drawn in the train step only


def state_hparams(cfg: Config) -> dict[str, jax.Array]:
    """Every traced float field at the top of the config: what the step reads from ``state.hparams``.

    A switch that is off (``label_smoothing=0``, ``ema_decay=0``) is left out: its piece of the
    program is not built, so nothing reads it. With ``data.augment`` on, the trial's ``seed`` is
    here too (uint32): the augmentation key of each update derives from it and the step count, so
    each member of a population draws from its own stream and no key needs to be carried.
    """
    out = {key: jnp.asarray(getattr(cfg, key), jnp.float32) for key, f in traced_fields(cfg).items()
           if "." not in key and f.type in (float, "float") and (getattr(cfg, key) or not is_switch(f))}
    if parse_augment(cfg.data.augment) is not None:
        out["seed"] = jnp.asarray(cfg.seed, jnp.uint32)
    return out


def _is_key(a: Any) -> bool:
    return jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def raw_keys(tree: Any) -> Any:
    """PRNG keys as their uint32 data: plain arrays stack, checkpoint and move like any other."""
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def typed_keys(tree: Any, key_leaves: tuple[bool, ...]) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [jax.random.wrap_key_data(a) if k else a for a, k in zip(leaves, key_leaves)])


def normalization(cfg: Config, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """The (mean, std) that standardize the features, or None: ``data.normalize`` against the dataset.

    Images stored as uint8 always become float in the step: standardized per channel (``auto``,
    ``true``), or scaled to [0, 1] (``false``: mean 0, std 255).
    """
    from pipeline.data.stats import feature_stats, is_image

    stats = feature_stats(info)
    setting = cfg.data.normalize
    channels = int(info.feature_shape[-1]) if is_image(info) else 0
    to_unit = (np.zeros(channels, np.float32), np.full(channels, 255.0, np.float32))
    if setting == "false":
        return to_unit if is_image(info) else None
    if setting == "true":
        if stats is None:
            raise ConfigError(f"bad value for 'data.normalize': dataset '{info.name}' has no feature statistics "
                              f"({info.feature_dtype} features); import it again or use data.normalize=false")
        return stats
    # auto: tabular float features, where scales differ by feature, and uint8 images (per channel);
    # not float images (already in [0, 1]) or tokens.
    tabular = len(info.feature_shape) == 1 and np.dtype(info.feature_dtype).kind == "f"
    if is_image(info):
        return stats if stats is not None else to_unit
    return stats if tabular else None


def _described(value: Any) -> str:
    """A returned value in a few words, for an error line: its type, and its text when short."""
    if value is None:
        return "None"
    text = repr(value)
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return f"{kind} {text}" if len(text) <= 40 and "\n" not in text else f"a {kind}"


def build(cfg: Config, info: DatasetInfo) -> nnx.Module:
    """The run's model (standardizing its input when ``data.normalize`` says so), in train mode.

    A user's build function that fails, or that returns anything but an ``nnx.Module``, is one line
    naming the family's file (and the dataset, or what it returned).
    """
    fam = family(cfg.model.name)
    try:
        model = build_model(cfg.model, info.feature_shape, info.output_size, cfg.seed)
    except PipelineError:
        raise
    except Exception as exc:  # a user's model that cannot be built for this data
        raise ConfigError(f"{fam.origin}: model '{fam.name}' cannot be built for dataset '{info.name}' "
                          f"(features {tuple(info.feature_shape)}, {info.output_size} outputs): "
                          f"{typed_line(exc)}") from exc
    if not isinstance(model, nnx.Module):  # the loop splits, merges and switches modes of an nnx.Module only
        raise ConfigError(f"{fam.origin}: model '{fam.name}': its build function returned {_described(model)}, "
                          "not an nnx.Module")
    stats = normalization(cfg, info)
    if stats is not None:
        model = Standardized(model, *stats)
    model.train()
    return model


def create_state(cfg: Config, info: DatasetInfo, total_steps: int) -> tuple[StepSpec, TrainState]:
    """Build the model, split it once (train and eval views), and initialise the optimizer."""
    objective = resolve(cfg, info)
    return _assemble(cfg, info, total_steps, objective, _model_parts(cfg, info))


class InitialStates:
    """``create_state`` for the many trials of a sweep, equal to it leaf for leaf, in less time.

    A model's initial values depend on its config, the seed and the data's normalization alone, so
    trials that differ only in other keys (the optimizer's, the loss's) share one built model;
    each trial's optimizer state, hyperparameters and spec are its own. The shared arrays are
    never written: every population copies its members' states (``stack``, ``put``).
    """

    def __init__(self, info: DatasetInfo, total_steps: int):
        self.info, self.total_steps = info, total_steps
        self.models: dict[tuple, tuple] = {}

    def __call__(self, cfg: Config, optimizer: bool = True) -> tuple[StepSpec, TrainState]:
        """``create_state``'s spec and state; without ``optimizer``, no optimizer state yet (its ``opt_state``
        None: ``population.fresh_population`` makes a population's together)."""
        objective = resolve(cfg, self.info)
        key = (cfg.seed, repr(cfg.model), cfg.data.normalize)
        if key not in self.models:
            self.models[key] = _model_parts(cfg, self.info)
        graphdef, eval_graphdef, params, rest = self.models[key]
        # Each trial its own containers (the leaves, immutable arrays, are shared).
        parts = (graphdef, eval_graphdef, jax.tree.map(lambda a: a, params), jax.tree.map(lambda a: a, rest))
        return _assemble(cfg, self.info, self.total_steps, objective, parts, optimizer)


def _model_parts(cfg: Config, info: DatasetInfo) -> tuple[Any, Any, Any, Any]:
    """The model's train and eval graphdefs, its parameters and the rest of its variables."""
    model = build(cfg, info)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
    return graphdef, eval_graphdef, params, rest


def _assemble(cfg: Config, info: DatasetInfo, total_steps: int, objective: Objective,
              parts: tuple, optimizer: bool = True) -> tuple[StepSpec, TrainState]:
    graphdef, eval_graphdef, params, rest = parts
    tx = make_optimizer(cfg.optimizer, total_steps, cfg.grad_accum)
    spec = StepSpec(
        graphdef=graphdef,
        eval_graphdef=eval_graphdef,
        tx=tx,
        objective=objective,
        batch_size=cfg.batch_size,
        compute_dtype=jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32,
        key_leaves=tuple(_is_key(a) for a in jax.tree.leaves(rest)),
        augment=augment_plan(cfg.data.augment, info.feature_shape, info.name),
    )
    state = TrainState(
        params=params,
        rest=raw_keys(rest),
        opt_state=tx.init(params) if optimizer else None,
        step=jnp.zeros([], jnp.int32),
        hparams=state_hparams(cfg),
        ema=jax.tree.map(jnp.copy, params) if cfg.ema_decay > 0 else None,
    )
    return spec, state


def model_graph(cfg: Config, info: DatasetInfo) -> Any:
    """The model's structure (its graphdef) without allocating it: what decides its compiled program."""
    return nnx.split(nnx.eval_shape(lambda: build(cfg, info)), nnx.Param, ...)[0]


def same_program(a: StepSpec, b: StepSpec) -> bool:
    """Whether two specs compile to the same step: what lets states share one vmapped population."""
    return (a.graphdef == b.graphdef and a.eval_graphdef == b.eval_graphdef and a.key_leaves == b.key_leaves
            and a.augment == b.augment)


# -- placement ----------------------------------------------------------------------------------
def state_shardings(state: TrainState, mesh: Any) -> TrainState:
    """Where each leaf of a train state lives on ``mesh``, by the FSDP rule
    (``pipeline.sharding.fsdp_spec``): an array of at least 2^12 elements (parameters, optimizer
    moments, their EMA, a large model statistic) is split over ``fsdp`` along its largest evenly
    divisible dimension; the rest (step, hyperparameters, RNG keys, small arrays) is replicated.
    With ``mesh.fsdp`` 1 every leaf is replicated."""
    from pipeline.sharding import state_shardings as by_rule

    return by_rule(state, mesh)


def place_state(state: TrainState, shardings: TrainState) -> TrainState:
    """A state (host, one device, or already placed) on its ``shardings`` (every process calls it)."""
    from pipeline.sharding import place

    return place(state, shardings)
