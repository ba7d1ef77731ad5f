"""JAX's persistent compilation cache, on by default for every command that compiles, and for the
Python API (``pipeline.fit``, ``pipeline.sweep``) unless the process set up a cache of its own.

A second identical run (or one that differs only in traced hyperparameters) loads its
programs from disk instead of compiling them: a loop of ``fit`` calls (an Optuna objective)
compiles its programs once, not once a trial.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_dir() -> Path:
    if "PIPELINE_COMPILE_CACHE" in os.environ:
        return Path(os.environ["PIPELINE_COMPILE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pipeline" / "jax"


def enable(directory: Path | None = None) -> Path:
    path = Path(directory) if directory else default_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program, however small or quick to compile: small models are our common case.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def enable_unless_configured() -> None:
    """The Python API's default: ``enable()``, unless JAX already has a cache folder (the user's
    ``jax.config.update("jax_compilation_cache_dir", ...)`` or ``$JAX_COMPILATION_CACHE_DIR``), which is kept."""
    if not jax.config.jax_compilation_cache_dir:
        enable()
