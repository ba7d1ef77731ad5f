"""An image folder as torchvision's ImageFolder and Hugging Face's imagefolder lay it out.

``DIR/CLASS/IMAGE`` (one pool of rows, split at random by ``--test-fraction``) or
``DIR/SPLIT/CLASS/IMAGE`` with SPLIT ``train``, ``test``, ``validation`` (``valid``, ``val``).
Images are ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` (any case); other files (a README, a
metadata file) are not read; hidden and ``_`` names are skipped. Class ids follow the sorted
class folder names over every split, so an id means the same in each.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs

from pipeline.data import fs as fsx
from pipeline.data.images import SUFFIXES
from pipeline.data.splits import ALIASES, ORDER
from pipeline.data.validate import DataError

TABLE_SUFFIXES = (".csv", ".parquet", ".npz")


@dataclass
class ImageFolder:
    """The files of each split in order, their class ids, and the class names."""

    source: str
    fs: pafs.FileSystem
    root: str
    splits: dict[str, list[str]]
    labels: dict[str, list[int]]
    class_names: list[str]


def holds_images(source: str) -> bool:
    """True for a folder (not a glob) with image files and no table files below it."""
    if "://" not in source and any(c in source for c in fsx.GLOB_CHARS):
        return False
    fs, path = fsx.resolve(source)
    if not fsx.is_dir(fs, path):
        return False
    return bool(fsx.files_under(fs, path, SUFFIXES)) and not fsx.files_under(fs, path, TABLE_SUFFIXES)


def list_images(source: str) -> ImageFolder:
    """Every image of ``source`` by split and class; DataError naming the file or folder that does not fit."""
    fs, root = fsx.resolve(source)
    files = fsx.files_under(fs, root, SUFFIXES)  # matched case-insensitively
    prefix = root.rstrip("/") + "/"
    parts = {p: p[len(prefix):].split("/") for p in files}
    split_named = {p: ALIASES.get(rel[0].lower()) if len(rel) > 1 else None for p, rel in parts.items()}
    by_split = any(s is not None for s in split_named.values())
    found: dict[str, list[tuple[str, str]]] = {}
    for path, rel in parts.items():
        depth = 3 if by_split else 2
        if len(rel) != depth or (by_split and split_named[path] is None):
            layout = "SPLIT/CLASS/IMAGE" if by_split else "CLASS/IMAGE"
            raise DataError(f"{path}: not in a class folder; {source} must hold {layout} "
                            "(SPLIT: train, test, validation)")
        split = split_named[path] if by_split else "train"
        found.setdefault(split, []).append((path, rel[-2]))
    if "train" not in found:
        raise DataError(f"{source}: images of the {', '.join(found)} split but none of train (put them in train/)")
    class_names = sorted({cls for pairs in found.values() for _, cls in pairs})
    if len(class_names) < 2:
        only = fsx.join(root, *([next(iter(found))] if by_split else []), class_names[0])
        raise DataError(f"{only}: the only class folder; an image dataset needs at least two classes")
    ids = {name: i for i, name in enumerate(class_names)}
    splits = {s: [p for p, _ in found[s]] for s in ORDER if s in found}
    labels = {s: [ids[c] for _, c in found[s]] for s in ORDER if s in found}
    return ImageFolder(source, fs, root, splits, labels, class_names)
