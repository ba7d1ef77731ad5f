"""One point made concrete: its config, its dataset, and host batches for the peers."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from pipeline.bench import synthetic
from pipeline.bench.points import Point
from pipeline.config import Config, apply_overrides
from pipeline.data import DatasetInfo, Split, Store
from pipeline.models import build_model

# A run long enough that the loop's automatic steps-per-call is its target (100), never the
# end of the run; the benchmark stops long before.
RUN_STEPS = 1_000_000


@dataclass
class Workload:
    point: Point
    cfg: Config
    info: DatasetInfo
    store: Store

    @property
    def tokens_per_example(self) -> int:
        """Tokens per example for language models (the sequence length); 0 otherwise."""
        return int(self.info.feature_shape[0]) if self.info.task == "language_modeling" else 0

    @functools.cached_property
    def train(self) -> Split:
        return self.store.read(self.cfg.data.name, "train")

    def host_batches(self, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``count`` batches (count, B, ...) drawn without replacement per epoch, as numpy."""
        n, b = len(self.train), self.cfg.batch_size
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(count * b / n))])
        idx = order[: count * b].reshape(count, b)
        return self.train.x[idx], self.train.y[idx]

    @functools.cached_property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter shapes by path, without allocating the parameters."""
        abstract = nnx.eval_shape(lambda: build_model(self.cfg.model, self.info.feature_shape,
                                                      self.info.output_size, self.cfg.seed))
        params = nnx.state(abstract, nnx.Param)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}

    @property
    def param_count(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes.values())


def point_config(point: Point, data_name: str) -> Config:
    if point.experiment:  # the experiment's own config, run long, evaluated never
        from pipeline.experiments import load_config

        base = dataclasses.replace(load_config(point.experiment), steps=RUN_STEPS, eval_every=RUN_STEPS,
                                   checkpoint_every=0)
    else:
        base = Config(data=data_name, steps=RUN_STEPS, eval_every=RUN_STEPS, batch_size=point.batch,
                      precision=point.precision, steps_per_call=point.steps_per_call)
    # Timed, never evaluated: every training row, no validation carve (a batch may be the whole split).
    return apply_overrides(base, ["data.validation_fraction=0", *point.model_overrides])


def make_workload(point: Point, store: Store) -> Workload:
    name = synthetic.ensure(store, point.data)
    return Workload(point, point_config(point, name), store.info(name), store)
