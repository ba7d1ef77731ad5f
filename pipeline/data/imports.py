"""Import a source into the store: read, split, validate, describe, write atomically."""

from __future__ import annotations

import re

from pipeline.data.builtins import BUILTINS
from pipeline.data.dataset import DatasetInfo, Split, describe
from pipeline.data.sources import load_source, split_off_test
from pipeline.data.store import Store
from pipeline.data.validate import DataError, check_split

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def import_dataset(store: Store, source: str, name: str, target: str | None = None,
                   test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False) -> DatasetInfo:
    """Import ``source`` as dataset ``name``. Nothing is written unless every check passes."""
    if not _NAME.match(name):
        raise DataError(f"bad dataset name '{name}': use letters, digits, '_', '-' and '.'")
    if store.exists(name) and not overwrite:
        raise DataError(f"dataset '{name}' already exists in {store.root} (use --overwrite)")
    loaded = load_source(source, target, seed)
    train, test = loaded.train, loaded.test
    if test is None:
        check_split(f"{source} (all rows)", train, loaded.task, loaded.num_classes)
        train, test = split_off_test(train, test_fraction, seed)
    splits: dict[str, Split] = {"train": train, "test": test}
    for split_name, split in splits.items():
        check_split(f"{source} ({split_name} split)", split, loaded.task, loaded.num_classes)
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{source}: train features have shape {train.x.shape[1:]} but test {test.x.shape[1:]}")
    info = describe(name, splits, loaded.task, source, loaded.class_names, loaded.num_classes)
    store.write(info, splits, overwrite=overwrite)
    return info


def ensure_dataset(store: Store, name: str) -> DatasetInfo:
    """The dataset's info, importing a built-in of the same name on first use."""
    if not store.exists(name) and name in BUILTINS:
        return import_dataset(store, f"builtin:{name}", name)
    return store.info(name)
