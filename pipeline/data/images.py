"""One image file's bytes to a uint8 array (H, W, C) with Pillow: mode conversion, optional resize.

``--channels 1`` converts to Pillow's "L" (grayscale), ``3`` to "RGB" (alpha dropped, palettes
expanded); without it an image keeps its own channel count (1 for grayscale modes, 3 for any
other) and the import refuses a mix. ``--image-size H,W`` center-crops the largest region of the
target's aspect ratio and resizes it to H x W with bilinear filtering, in one ``Image.resize``
call (its ``box``), so no image is distorted and no cropped copy is made. A JPEG to be shrunk to
half its size or less is decoded at a reduced scale first (``Image.draft``: libjpeg's scaled
inverse DCT, 1/2 to 1/8), still at least the target's size: decoding and resizing are the cost
of an import, and both shrink with the pixel count.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.data.validate import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
MAX_SIDE = 1 << 15


@dataclass(frozen=True)
class ImageOptions:
    """``size`` (H, W) to resize to, or None to keep every image's size; ``channels`` 1, 3 or None (as stored)."""

    size: tuple[int, int] | None = None
    channels: int | None = None

    def check(self) -> None:
        if self.channels not in (None, 1, 3):
            raise DataError(f"--channels must be 1 or 3, not {self.channels}")
        if self.size is not None and (len(self.size) != 2 or not all(1 <= s <= MAX_SIDE for s in self.size)):
            raise DataError(f"--image-size must be two sides of 1 to {MAX_SIDE} pixels (H,W), not {self.size}")


def parse_image_size(text: str) -> tuple[int, int]:
    """``"H,W"`` (or one number for a square) as (H, W); DataError for anything else."""
    parts = [p.strip() for p in text.split(",")]
    try:
        sides = tuple(int(p) for p in parts)
    except ValueError:
        sides = ()
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or not all(1 <= s <= MAX_SIDE for s in sides):
        raise DataError(f"--image-size must be H,W in pixels (e.g. 32,32), not '{text}'")
    return sides[0], sides[1]


def channels_of(mode: str) -> int:
    return 1 if mode in GRAYSCALE_MODES else 3


def center_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centered region of (width, height) with the aspect ratio of ``size`` (H, W), as large as fits."""
    scale = min(width / size[1], height / size[0])
    w, h = size[1] * scale, size[0] * scale
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def _draft_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest whole image whose center crop still covers ``size`` (H, W) pixel for pixel."""
    left, top, right, bottom = center_box(width, height, size)
    scale = max(size[1] / (right - left), size[0] / (bottom - top))
    return math.ceil(width * scale), math.ceil(height * scale)


def peek(data: bytes, where: str) -> tuple[tuple[int, int], int]:
    """((H, W), channels) from the header alone, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return (image.height, image.width), channels_of(image.mode)
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many kinds; each is a bad file
        raise DataError(f"{where}: cannot read the image: {_line(exc)}") from None


def decode(data: bytes, where: str, options: ImageOptions) -> np.ndarray:
    """The pixels as uint8 (H, W, C); DataError naming ``where`` for a corrupt, truncated or unreadable image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            channels = options.channels or channels_of(image.mode)
            mode = "L" if channels == 1 else "RGB"
            if options.size is not None and image.format == "JPEG":
                image.draft(mode, _draft_size(image.width, image.height, options.size))
            converted = image if image.mode == mode else image.convert(mode)
            if options.size is not None and converted.size != (options.size[1], options.size[0]):
                box = center_box(converted.width, converted.height, options.size)
                converted = converted.resize((options.size[1], options.size[0]), Image.Resampling.BILINEAR,
                                             box=box)
            pixels = np.asarray(converted, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many kinds; each is a bad file
        raise DataError(f"{where}: cannot decode the image: {_line(exc)}") from None
    return pixels.reshape(*pixels.shape[:2], channels)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
