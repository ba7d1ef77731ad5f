"""The built-in optimizers: Optax's own, registered like a user's (``pipeline.register_optimizer``).

Each factory takes the fields of ``OptimizerConfig`` it names in ``traced``, as traced scalars.
One that takes ``weight_decay`` hands it to Optax's own argument (decoupled, masked to matrices
and kernels); for the others the pipeline adds coupled L2 to the gradient (``build.py``).
"""

from __future__ import annotations

import jax
import optax

from pipeline.optim.mask import decay_mask
from pipeline.registry import register_optimizer

LR_DECAY = ("learning_rate", "weight_decay")


def sgd(learning_rate: jax.Array) -> optax.GradientTransformation:
    return optax.sgd(learning_rate)


def momentum(learning_rate: jax.Array, momentum: jax.Array) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum)


def nesterov(learning_rate: jax.Array, momentum: jax.Array) -> optax.GradientTransformation:
    return optax.sgd(learning_rate, momentum=momentum, nesterov=True)


def adam(learning_rate: jax.Array, b1: jax.Array, b2: jax.Array) -> optax.GradientTransformation:
    return optax.adam(learning_rate, b1=b1, b2=b2)


def adamw(learning_rate: jax.Array, weight_decay: jax.Array, b1: jax.Array,
          b2: jax.Array) -> optax.GradientTransformation:
    return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)


def lion(learning_rate: jax.Array, weight_decay: jax.Array, b1: jax.Array,
         b2: jax.Array) -> optax.GradientTransformation:
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)


def lamb(learning_rate: jax.Array, weight_decay: jax.Array, b1: jax.Array,
         b2: jax.Array) -> optax.GradientTransformation:
    return optax.lamb(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)


def adafactor(learning_rate: jax.Array, weight_decay: jax.Array) -> optax.GradientTransformation:
    # Optax adds the decay after scaling by the learning rate: the update loses weight_decay * p.
    return optax.adafactor(learning_rate, weight_decay_rate=weight_decay, weight_decay_mask=decay_mask)


def rmsprop(learning_rate: jax.Array, b2: jax.Array) -> optax.GradientTransformation:
    # b2 is the decay of the squared gradients' moving average, the role it has in Adam.
    return optax.rmsprop(learning_rate, decay=b2)


def adagrad(learning_rate: jax.Array) -> optax.GradientTransformation:
    return optax.adagrad(learning_rate)


register_optimizer("sgd", sgd, traced=("learning_rate",))
register_optimizer("momentum", momentum, traced=("learning_rate", "momentum"))
register_optimizer("nesterov", nesterov, traced=("learning_rate", "momentum"))
register_optimizer("adam", adam, traced=("learning_rate", "b1", "b2"))
register_optimizer("adamw", adamw, traced=(*LR_DECAY, "b1", "b2"))
register_optimizer("lion", lion, traced=(*LR_DECAY, "b1", "b2"))
register_optimizer("lamb", lamb, traced=(*LR_DECAY, "b1", "b2"))
register_optimizer("adafactor", adafactor, traced=LR_DECAY)
register_optimizer("rmsprop", rmsprop, traced=("learning_rate", "b2"))
register_optimizer("adagrad", adagrad, traced=("learning_rate",))
