"""Image augmentation inside the compiled train step (``data.augment``), off in evaluation.

``data.augment`` is a comma list: ``flip`` (horizontal, half the images), ``crop:PAD`` (zero-pad
PAD pixels on every side, then crop back to H x W at a random offset), ``cutout:N`` (an N x N
square, centred at a random pixel and clipped at the borders, set to 0) and ``mixup:ALPHA``
(images mixed with a permutation of the batch by one lam ~ Beta(ALPHA, ALPHA); the loss is mixed
the same way). Padding and cutout write 0 in the stored pixel values (black, as torchvision's
``RandomCrop(padding=PAD)`` before ``Normalize``); images stay uint8 until mixup, which makes them
float (normalization is affine, so mixing before it equals mixing after it).

They run in a fixed order whatever the order of the list: flip, crop, cutout, then mixup. Every
draw comes from one key per step: ``fold_in(fold_in(key(seed), TAG), step)`` with the member's
own ``seed`` (kept in ``state.hparams["seed"]``) and its update count, so members of a population
draw independently, a member draws what its solo run draws, and a resumed run draws the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pipeline.config import ConfigError

KEY = "data.augment"
SPELLINGS = "flip, crop:PAD, cutout:N, mixup:ALPHA"
TAG = 0x61756721  # keeps augmentation draws apart from the other streams derived from the same seed


@dataclass(frozen=True)
class Augment:
    """What ``data.augment`` turns on; a zero is off."""

    flip: bool = False
    crop: int = 0  # padding in pixels on every side
    cutout: int = 0  # side of the square
    mixup: float = 0.0  # alpha of Beta(alpha, alpha)


def _bad(text: str) -> ConfigError:
    return ConfigError(f"bad value for '{KEY}': {text}")


def _whole(name: str, arg: str) -> int:
    try:
        value = int(arg)
    except ValueError:
        value = 0
    if value < 1:
        raise _bad(f"'{name}:{arg}' needs a whole number of pixels of at least 1, e.g. {name}:4")
    return value


def _alpha(arg: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        value = 0.0
    if not 0.0 < value < float("inf"):
        raise _bad(f"'mixup:{arg}' needs a positive alpha, e.g. mixup:0.2")
    return value


def parse_augment(text: str) -> Augment | None:
    """``data.augment``'s spelling as an ``Augment`` (None when empty); a bad one is one line."""
    fields: dict[str, object] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, colon, arg = item.partition(":")
        if name in fields:
            raise _bad(f"'{name}' is listed twice in {text!r}")
        if name == "flip":
            if colon:
                raise _bad(f"'flip' takes no argument (got {item!r})")
            fields[name] = True
        elif name in ("crop", "cutout"):
            fields[name] = _whole(name, arg)
        elif name == "mixup":
            fields[name] = _alpha(arg)
        else:
            raise _bad(f"unknown augmentation {name!r}; choose from {SPELLINGS}")
    return Augment(**fields) if fields else None


def augment_plan(text: str, feature_shape: tuple[int, ...], dataset: str) -> Augment | None:
    """``parse_augment`` checked against the dataset: images (H, W, C), and sizes that fit them."""
    plan = parse_augment(text)
    if plan is None:
        return None
    shape = tuple(int(d) for d in feature_shape)
    if len(shape) != 3:
        raise _bad(f"augmentation is for image features (H, W, C); dataset '{dataset}' has features of shape "
                   f"{shape}")
    side = min(shape[:2])
    if plan.crop >= side or plan.cutout > side:
        key, value = ("crop", plan.crop) if plan.crop >= side else ("cutout", plan.cutout)
        most = side - 1 if key == "crop" else side
        raise _bad(f"'{key}:{value}' does not fit dataset '{dataset}' ({shape[0]} x {shape[1]} images); "
                   f"use at most {key}:{most}")
    return plan


class Draws(NamedTuple):
    """One step's random draws for a batch (None where that augmentation is off)."""

    flip_B: jax.Array | None  # bool: mirror this image
    offset_Bx2: jax.Array | None  # int32: top-left corner of the crop in the padded image
    centre_Bx2: jax.Array | None  # int32: the cutout square's centre pixel
    perm_B: jax.Array | None  # int32: each image's mixup partner
    lam: jax.Array | None  # float32 scalar: the weight of the image itself


def step_key(seed: jax.Array, step: jax.Array) -> jax.Array:
    """The key of one member's draws at one update."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), TAG), step)


def draw(plan: Augment, key: jax.Array, batch: int, height: int, width: int) -> Draws:
    k_flip, k_crop, k_cut, k_perm, k_lam = jax.random.split(key, 5)
    return Draws(
        flip_B=jax.random.bernoulli(k_flip, 0.5, (batch,)) if plan.flip else None,
        offset_Bx2=jax.random.randint(k_crop, (batch, 2), 0, 2 * plan.crop + 1) if plan.crop else None,
        centre_Bx2=(jax.random.randint(k_cut, (batch, 2), 0, jnp.array([height, width])) if plan.cutout else None),
        perm_B=jax.random.permutation(k_perm, batch) if plan.mixup else None,
        lam=jax.random.beta(k_lam, plan.mixup, plan.mixup) if plan.mixup else None,
    )


def _crop(x_BxHxWxC: jax.Array, pad: int, offset_Bx2: jax.Array) -> jax.Array:
    _, h, w, c = x_BxHxWxC.shape
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(padded, offset_Bx2)


def _cutout(x_BxHxWxC: jax.Array, side: int, centre_Bx2: jax.Array) -> jax.Array:
    _, h, w, _ = x_BxHxWxC.shape
    top_B1, left_B1 = centre_Bx2[:, :1] - side // 2, centre_Bx2[:, 1:] - side // 2
    rows_BxH = (jnp.arange(h) >= top_B1) & (jnp.arange(h) < top_B1 + side)
    cols_BxW = (jnp.arange(w) >= left_B1) & (jnp.arange(w) < left_B1 + side)
    inside = rows_BxH[:, :, None, None] & cols_BxW[:, None, :, None]
    return jnp.where(inside, jnp.zeros((), x_BxHxWxC.dtype), x_BxHxWxC)


def apply(plan: Augment, d: Draws, x_BxHxWxC: jax.Array) -> jax.Array:
    """The batch with the draws applied: flip, crop, cutout, then mixup's images."""
    x = x_BxHxWxC
    if plan.flip:
        x = jnp.where(d.flip_B[:, None, None, None], x[:, :, ::-1], x)
    if plan.crop:
        x = _crop(x, plan.crop, d.offset_Bx2)
    if plan.cutout:
        x = _cutout(x, plan.cutout, d.centre_Bx2)
    if plan.mixup:
        x = x.astype(jnp.float32)
        x = d.lam * x + (1.0 - d.lam) * x[d.perm_B]
    return x


class Mix(NamedTuple):
    """Mixup's second labels and their weight: the loss is ``lam * loss(y) + (1 - lam) * loss(y_other)``."""

    y_other: jax.Array
    lam: jax.Array


def augment(plan: Augment, key: jax.Array, x_BxHxWxC: jax.Array, y: jax.Array) -> tuple[jax.Array, Mix | None]:
    """One step's augmented batch, and mixup's second labels (None without mixup)."""
    b, h, w, _ = x_BxHxWxC.shape
    d = draw(plan, key, b, h, w)
    mix = Mix(y[d.perm_B], d.lam) if plan.mixup else None
    return apply(plan, d, x_BxHxWxC), mix
