"""A run is a folder: config.json, metrics.parquet, summary.json, checkpoints/, plots."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def default_runs_root() -> Path:
    return Path(os.environ.get("PIPELINE_RUNS", "runs"))


def new_run_dir(root: Path, experiment: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{experiment}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
