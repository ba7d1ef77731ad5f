"""What a measurement ran on: device, backend, library versions, commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "pyarrow", "torch")


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit, with "+dirty" when tracked files have changed; None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def device_memory_bytes() -> int | None:
    """Memory the default device can allocate: its limit on accelerators, free RAM on CPU."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def device_free_bytes() -> int | None:
    """Memory the default device can still allocate: limit less use on accelerators, free RAM on CPU."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return device_memory_bytes() if device.platform == "cpu" else None


def environment() -> dict[str, object]:
    device = jax.local_devices()[0]
    env: dict[str, object] = {
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
    for lib in LIBRARIES:
        env[lib] = version(lib)
    return env
