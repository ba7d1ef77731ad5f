"""Checkpoints of a running population: the stacked state, the host's records, the curves so far.

One folder per population (``checkpoints/gG-cC``), replaced as a whole at every evaluation:
written into a new hidden folder beside it (``.gG-cC.new-RANDOM``, made exclusively) and
swapped into place atomically (``track.run_dir.replace_folder``), so a killed sweep leaves
either the previous checkpoint or the new one, never half of one. The state is a plain
``.npz`` of the pytree's leaves (a population of small models is small); the tree structure
comes from a freshly built population, so nothing but arrays is stored. The curves grow in
parts (``gG-cC.curves/part-STEP.parquet``, only the rows since the last checkpoint), and a
checkpoint at step S owns the parts up to S. Every file goes through a uniquely named
temporary file, fsync and a rename.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa

from pipeline.track.run_dir import (
    CorruptFile,
    leftovers,
    make_folders,
    new_folder_beside,
    read_json_object,
    read_parquet_files,
    recover_folder,
    remove_path,
    replace_folder,
    write_json,
    write_parquet,
    write_with,
)


def _to_host(leaf: Any) -> np.ndarray:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


def _parts(folder: Path) -> Path:
    return folder.with_name(folder.name + ".curves")


def save(folder: Path, host_state: Any, meta: dict, new_curves: pa.Table) -> None:
    """Save at ``meta["step"]``; ``new_curves`` are the rows recorded since the previous save."""
    parts = _parts(folder)
    make_folders(parts)
    write_parquet(new_curves, parts / f"part-{meta['step']:09d}.parquet")
    recover_folder(folder)  # a swap killed halfway: the previous checkpoint back in place
    tmp = new_folder_beside(folder, "new")
    try:
        leaves = jax.tree.leaves(host_state)
        arrays = {f"leaf_{i:05d}": _to_host(leaf) for i, leaf in enumerate(leaves)}
        write_with(tmp / "state.npz", lambda handle: np.savez(handle, **arrays))
        write_json(tmp / "meta.json", meta)  # last: a folder with meta.json is complete
        replace_folder(tmp, folder)
    except BaseException:
        remove_path(tmp)
        raise


def _complete(folder: Path) -> Path | None:
    """``folder``, or the previous checkpoint a swap killed halfway left renamed aside."""
    candidates = [folder] + [p for p in leftovers(folder) if p.name.startswith(f".{folder.name}.old-")]
    for candidate in candidates:
        if (candidate / "meta.json").is_file():
            return candidate
    return None


def read_meta(folder: Path) -> dict | None:
    """The meta of the newest complete checkpoint; None when there is none or it is damaged
    (the population then starts over, with a note on stderr)."""
    found = _complete(folder)
    if found is None:
        return None
    try:
        return read_json_object(found / "meta.json", ("step", "members", "slots", "live", "wall_s", "records"))
    except CorruptFile as exc:
        print(f"note: {exc}; the population starts over", file=sys.stderr)
        return None


def load(folder: Path, like_state: Any) -> tuple[Any, dict, pa.Table] | None:
    """The state (shaped like ``like_state``), meta and curves of the newest complete checkpoint."""
    found = _complete(folder)
    if found is None:
        return None
    leaves, treedef = jax.tree.flatten(like_state)
    try:
        with np.load(found / "state.npz") as saved:
            if len(saved.files) != len(leaves):
                return None  # made by another program: start this population over
            loaded = [saved[f"leaf_{i:05d}"] for i in range(len(leaves))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        print(f"note: {found / 'state.npz'} is unreadable ({type(exc).__name__}); the population starts over",
              file=sys.stderr)
        return None
    for i, (a, b) in enumerate(zip(leaves, loaded)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            loaded[i] = jax.random.wrap_key_data(b)
        elif a.shape != b.shape or a.dtype != b.dtype:
            return None
    meta = read_json_object(found / "meta.json", ("step",))
    owned = [p for p in sorted(_parts(folder).glob("part-*.parquet")) if int(p.stem.split("-")[1]) <= meta["step"]]
    curves = read_parquet_files(owned) if owned else None
    return jax.tree.unflatten(treedef, loaded), meta, curves


def remove(folder: Path) -> None:
    for candidate in [folder, _parts(folder), *leftovers(folder), *leftovers(_parts(folder))]:
        remove_path(candidate)
