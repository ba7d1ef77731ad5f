"""The sweep folder: ``sweep.json`` (what was swept and how it was split), tables, plots, checkpoints.

A folder remembers the space that made it; resuming it with a different space, strategy,
trial count, search seed or base config is refused, naming what differs, before anything
in it is touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.track.run_dir import new_run_dir, read_json, write_json

SWEEP_FILE = "sweep.json"
IDENTITY = ("experiment", "base_config", "space", "strategy", "trials_requested", "search_seed", "rungs", "keep")


def default_sweeps_root() -> Path:
    return Path(os.environ.get("PIPELINE_SWEEPS", "sweeps"))


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file()


def check_resumable(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The saved description of ``path`` when it is this sweep; None for a new folder; else an error."""
    if not path.exists():
        return None
    if not is_sweep_dir(path):
        if path.is_dir() and not any(path.iterdir()):
            return None
        raise ConfigError(f"bad value for '--sweep-dir': {path} exists and is not a sweep folder (no {SWEEP_FILE})")
    saved = read_json(path / SWEEP_FILE)
    differing = [k for k in IDENTITY if saved.get(k) != identity.get(k)]
    if differing:
        details = "; ".join(f"{k}: {_short(saved.get(k))} -> {_short(identity.get(k))}" for k in differing)
        raise ConfigError(f"sweep folder {path} was made by a different sweep ({details}); "
                          "use another --sweep-dir")
    return saved


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def create(path: Path | None, root: Path, experiment: str, description: dict[str, Any]) -> Path:
    folder = path if path is not None else new_run_dir(root, experiment)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_json(folder / SWEEP_FILE, description)
    return folder
