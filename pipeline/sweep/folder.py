"""The sweep folder: ``sweep.json`` (what was swept and how it was split), tables, plots, checkpoints.

A folder remembers the space that made it; resuming it with a different space, strategy,
trial count, search seed or base config is refused, naming what differs, before anything
in it is touched. A new folder is made exclusively (``os.mkdir``, a unique name); the process
that runs a sweep locks its folder (``SWEEP_DIR/.lock``) before reading or writing anything
in it, so a second ``pipeline sweep --sweep-dir SAME`` is refused naming the holder. A search's
study (``study.journal``, Optuna's file journal) lives in the folder too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, from_dict, to_dict
from pipeline.durable.files import make_folders, write_json
from pipeline.durable.folder_locks import hold_folder
from pipeline.durable.records import read_json_object
from pipeline.track.run_dir import new_run_dir

SWEEP_FILE = "sweep.json"
IDENTITY = ("experiment", "base_config", "space", "strategy", "trials_requested", "search_seed", "rungs", "keep",
            "pruner", "round_size")  # the last two: a search's (absent, None, for grid and random)


def default_sweeps_root() -> Path:
    return Path(os.environ.get("PIPELINE_SWEEPS", "sweeps"))


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file()


def is_empty_dir(path: Path) -> bool:
    """A folder with nothing in it but hidden entries (a lock file)."""
    return path.is_dir() and not any(not p.name.startswith(".") for p in path.iterdir())


def check_resumable(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The saved description of ``path`` when it is this sweep; None for a new folder; else an error.

    An existing folder is locked for this process first (refused when another one runs it).
    """
    if not path.exists():
        return None
    if not is_sweep_dir(path):
        if is_empty_dir(path):
            hold_folder(path, "sweep folder")
            return None
        raise ConfigError(f"bad value for '--sweep-dir': {path} exists and is not a sweep folder (no {SWEEP_FILE})")
    hold_folder(path, "sweep folder")
    saved = read_json_object(path / SWEEP_FILE, ("chunks",))
    differing = [k for k in IDENTITY if _comparable(k, saved.get(k)) != _comparable(k, identity.get(k))]
    if differing:
        details = "; ".join(f"{k}: {_short(saved.get(k))} -> {_short(identity.get(k))}" for k in differing)
        raise ConfigError(f"sweep folder {path} was made by a different sweep ({details}); "
                          "use another --sweep-dir")
    return saved


def _comparable(key: str, value: Any) -> Any:
    """A base config as this version reads it: keys added since the folder was made take their defaults."""
    if key != "base_config" or not isinstance(value, dict):
        return value
    try:
        return to_dict(from_dict(Config, value))
    except (ConfigError, TypeError, ValueError, AttributeError):
        return value


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def create(path: Path | None, root: Path, experiment: str, description: dict[str, Any]) -> Path:
    """Make (or, for an empty ``--sweep-dir``, take) the sweep folder, lock it and write ``sweep.json``."""
    folder = path if path is not None else new_run_dir(root, experiment)
    make_folders(folder)
    hold_folder(folder, "sweep folder")
    if path is not None and any(not p.name.startswith(".") and p.name != "checkpoints" for p in folder.iterdir()):
        # Filled by another sweep between the check and now: never mix two sweeps in one folder.
        raise ConfigError(f"bad value for '--sweep-dir': {path} exists and is not empty")
    make_folders(folder / "checkpoints")
    write_json(folder / SWEEP_FILE, description)
    return folder
