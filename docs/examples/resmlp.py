"""A residual MLP with dropout and batch norm, trained with a focal loss: an experiment file that
brings its own model and objective. See docs/extending.md, which walks through it."""

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

import pipeline
from pipeline import Config, ModelConfig, Objective, OptimizerConfig


# 1. The model's config: a frozen dataclass of the fields its build function reads.
#    `pipeline train resmlp.py model.width=128` overrides them like any built-in's.
@dataclass(frozen=True)
class ResMLPConfig(ModelConfig):
    name: str = "resmlp"
    width: int = 64
    blocks: int = 2
    dropout: float = 0.1  # nnx.Dropout keeps its rate as a static attribute: a new rate compiles anew


# 2. The model, written the usual NNX way: its own nnx.Dropout and nnx.BatchNorm. The pipeline
#    trains it in train mode and evaluates it in eval mode (dropout off, running statistics).
class Block(nnx.Module):
    def __init__(self, width: int, dropout: float, *, rngs: nnx.Rngs):
        self.norm = nnx.BatchNorm(width, rngs=rngs)
        self.linear = nnx.Linear(width, width, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x):
        return x + self.drop(jax.nn.relu(self.linear(self.norm(x))))


class ResMLP(nnx.Module):
    def __init__(self, cfg: ResMLPConfig, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Linear(in_features, cfg.width, rngs=rngs)
        self.blocks = nnx.List([Block(cfg.width, cfg.dropout, rngs=rngs) for _ in range(cfg.blocks)])
        self.head = nnx.Linear(cfg.width, out_features, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def build(cfg: ResMLPConfig, feature_shape: tuple[int, ...], out_features: int, rngs: nnx.Rngs) -> ResMLP:
    return ResMLP(cfg, math.prod(feature_shape), out_features, rngs=rngs)


pipeline.register_model("resmlp", ResMLPConfig, build)


# 3. The objective: a focal loss (cross-entropy that down-weights examples already right).
GAMMA = 2.0


def focal_loss(logits, labels, hparams):
    """The batch mean the gradient follows, and metrics of the batch for the training curves."""
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    loss = (-((1.0 - jnp.exp(logp)) ** GAMMA) * logp).mean()
    return loss, {"loss": loss, "accuracy": (logits.argmax(-1) == labels).mean()}


def focal_sums(logits, labels, mask):
    """Statistics of one evaluation batch that add up over batches (mask 0 marks padding rows)."""
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    focal = -((1.0 - jnp.exp(logp)) ** GAMMA) * logp
    wrong = logits.argmax(-1) != labels
    return {"loss": (focal * mask).sum(), "wrong": (wrong * mask).sum(), "count": mask.sum()}


def focal_finalize(sums):
    """A whole split's metrics from its summed statistics."""
    return {"loss": sums["loss"] / sums["count"], "error": sums["wrong"] / sums["count"],
            "accuracy": 1.0 - sums["wrong"] / sums["count"]}


pipeline.register_objective(Objective(
    name="focal", loss=focal_loss, sums=focal_sums, finalize=focal_finalize,
    higher_is_better={"loss": False, "error": False, "accuracy": True}, best="error", tasks=("classification",)))


# 4. The experiment: data, model, objective, optimizer and schedule.
def config() -> Config:
    return Config(data="digits", objective="focal", steps=1500, batch_size=64, eval_every=250,
                  model=ResMLPConfig(), optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3,
                                                                  weight_decay=1e-4))


# 5. What `pipeline sweep resmlp.py` sweeps when no space is given: one vmapped population of 6.
def sweep() -> dict[str, str]:
    return {"optimizer.learning_rate": "logspace(1e-3,1e-2,3)", "seed": "range(2)"}
