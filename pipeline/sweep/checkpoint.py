"""Checkpoints of a running population: the stacked state, the host's records, the curves so far.

One folder per population (``checkpoints/gG-cC``), replaced as a whole at every evaluation:
written beside it as ``.tmp`` and renamed into place, so a killed sweep leaves either the
previous checkpoint or the new one, never half of one. The state is a plain ``.npz`` of
the pytree's leaves (a population of small models is small); the tree structure comes
from a freshly built population, so nothing but arrays is stored. The curves grow in
parts (``gG-cC.curves/part-STEP.parquet``, only the rows since the last checkpoint), and
a checkpoint at step S owns the parts up to S.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.track.run_dir import read_json, write_json


def _to_host(leaf: Any) -> np.ndarray:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


def _parts(folder: Path) -> Path:
    return folder.with_name(folder.name + ".curves")


def save(folder: Path, host_state: Any, meta: dict, new_curves: pa.Table) -> None:
    """Save at ``meta["step"]``; ``new_curves`` are the rows recorded since the previous save."""
    parts = _parts(folder)
    parts.mkdir(parents=True, exist_ok=True)
    part = parts / f"part-{meta['step']:09d}.parquet"
    pq.write_table(new_curves, part.with_suffix(".tmp"))
    os.replace(part.with_suffix(".tmp"), part)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    leaves = jax.tree.leaves(host_state)
    np.savez(tmp / "state.npz", **{f"leaf_{i:05d}": _to_host(leaf) for i, leaf in enumerate(leaves)})
    write_json(tmp / "meta.json", meta)  # last: a folder with meta.json is complete
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _complete(folder: Path) -> Path | None:
    """``folder``, or its ``.old`` twin after a crash between the two renames of ``save``."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "meta.json").is_file():
            return candidate
    return None


def read_meta(folder: Path) -> dict | None:
    found = _complete(folder)
    return read_json(found / "meta.json") if found else None


def load(folder: Path, like_state: Any) -> tuple[Any, dict, pa.Table] | None:
    """The state (shaped like ``like_state``), meta and curves of the newest complete checkpoint."""
    found = _complete(folder)
    if found is None:
        return None
    leaves, treedef = jax.tree.flatten(like_state)
    with np.load(found / "state.npz") as saved:
        if len(saved.files) != len(leaves):
            return None  # made by another program: start this population over
        loaded = [saved[f"leaf_{i:05d}"] for i in range(len(leaves))]
    for i, (a, b) in enumerate(zip(leaves, loaded)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            loaded[i] = jax.random.wrap_key_data(b)
        elif a.shape != b.shape or a.dtype != b.dtype:
            return None
    meta = read_json(found / "meta.json")
    owned = [p for p in sorted(_parts(folder).glob("part-*.parquet")) if int(p.stem.split("-")[1]) <= meta["step"]]
    curves = pa.concat_tables([pq.read_table(p) for p in owned]) if owned else None
    return jax.tree.unflatten(treedef, loaded), meta, curves


def remove(folder: Path) -> None:
    for candidate in (folder, folder.with_name(folder.name + ".old"), folder.with_name(folder.name + ".tmp"),
                      _parts(folder)):
        shutil.rmtree(candidate, ignore_errors=True)
